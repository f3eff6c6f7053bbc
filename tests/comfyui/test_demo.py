"""`make demo` (scripts/demo) end to end at the tiny size: eager, DeepyTorch, and a new process on the compile cache
the first left, which must start from precompiled artifacts; the images agree."""
import os
import re
import subprocess
import sys

import pytest

from devkit import locate
from devkit.locate import REPO_ROOT


def demo_checkout():
    """The ComfyUI `make demo` runs on (no COMFYUI_PATH: the newest checkout found)."""
    saved = os.environ.pop("COMFYUI_PATH", None)
    try:
        found = locate.checkouts()
    finally:
        if saved is not None:
            os.environ["COMFYUI_PATH"] = saved
    return found[-1][1] if found else None


def test_demo_runs_and_a_new_process_starts_from_the_cache(comfy, tmp_path):
    if demo_checkout() != os.path.abspath(comfy.comfy_dir):
        pytest.skip(f"make demo runs on the newest ComfyUI checkout ({demo_checkout()}); this is {comfy.comfy_dir}")
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "demo"), "--size", "tiny", "--res", "64",
                          "--steps", "2", "--cache", str(tmp_path),
                          "--inductor-cache", os.environ["TORCHINDUCTOR_CACHE_DIR"]],
                         env=dict(os.environ, COMFYUI_PATH=comfy.comfy_dir), capture_output=True, text=True,
                         timeout=900)
    text = out.stdout + out.stderr[-3000:]
    assert out.returncode == 0, text
    assert re.search(r"speed-up \d+\.\d\dx", out.stdout), text
    assert "started 'precompiled' from the cache" in out.stdout, text
    assert "allocator: glibc, fixed thresholds: MALLOC_MMAP_THRESHOLD_=33554432" in out.stdout, text
    diff = int(re.search(r"max difference (\d+)/255", out.stdout).group(1))
    assert diff <= 1, text
    assert os.path.getsize(tmp_path / "deepytorch-demo.png") > 1000
