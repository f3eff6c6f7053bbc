"""`make bench-gpu`'s pieces, rehearsed on this CPU so that they cannot rot before a GPU is lent: the folder that
travels (scripts/prepare-gpu-carry) fits the device tool's 64 MiB; the GPU machine's image (devkit.gpu_image, its
package list) boots ComfyUI with the carried wheels and not without them; benchmarks/gpu.py --dry-run runs every
FLUX phase at the tiny size under that image and writes what the device tool can bring back. Runs on the checkout
the GPU run carries (the pinned current ComfyUI)."""
import json
import os
import re
import subprocess
import sys

import pytest

from devkit import gpu_image, locate
from devkit.locate import REPO_ROOT

CARRIED_CHECKOUT = os.path.join(locate.CACHE, "current")


@pytest.fixture(scope="module")
def carried(comfy):
    if os.path.realpath(comfy.comfy_dir) != os.path.realpath(CARRIED_CHECKOUT):
        pytest.skip(f"the GPU run carries {CARRIED_CHECKOUT}; this is {comfy.comfy_dir}")
    return comfy


def python(code, **env):
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.join(REPO_ROOT, 'dev')!r})\n"
                           + code], capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))


def test_the_carried_folder_fits_the_device_tools_limit(carried, tmp_path):
    dest = tmp_path / "gpu"
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "prepare-gpu-carry"), "--dest", str(dest)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    wheels = sorted(f.split("-")[0] for f in os.listdir(dest / "whl"))
    assert wheels == sorted(gpu_image.CARRIED)
    assert (dest / "ComfyUI" / "main.py").is_file() and not (dest / "ComfyUI" / ".git").exists()
    assert (dest / "COMMIT").read_text().strip()
    total = float(out.stdout.split(" MiB = ")[1].split(" MiB")[0])
    assert total <= 64, out.stdout


def test_the_gpu_image_boots_comfyui_with_the_carried_wheels_and_not_without(carried):
    boot = ("from devkit import gpu_image\n"
            "gpu_image.block({carried})\n"
            "import tempfile\n"
            "from devkit.comfy_boot import Comfy\n"
            f"Comfy({carried.comfy_dir!r}, tempfile.mkdtemp(), device='cpu')\n"
            "import nodes\n"
            "print('booted', 'KSampler' in nodes.NODE_CLASS_MAPPINGS)\n")
    ok = python(boot.format(carried="gpu_image.CARRIED"))
    assert ok.returncode == 0 and "booted True" in ok.stdout, ok.stdout + ok.stderr[-3000:]
    bare = python(boot.format(carried="()"))
    assert bare.returncode != 0
    assert "No module named 'torchsde' (rehearsal: torchsde is not on the GPU machine's image and not carried)" in \
        bare.stderr, bare.stderr[-3000:]


def test_dry_run_runs_every_flux_phase_and_drops_what_does_not_fit(carried, tmp_path):
    out_dir = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "gpu.py"), "--dry-run", "--budget", "900",
           "--out", str(out_dir)]
    out = subprocess.run(cmd, env=dict(os.environ, COMFYUI_PATH=carried.comfy_dir), capture_output=True, text=True,
                         timeout=1200)
    log = (out_dir / "log.txt").read_text() if (out_dir / "log.txt").exists() else ""
    assert out.returncode == 0, out.stdout[-3000:] + log[-5000:]
    assert sorted(os.listdir(out_dir)) == ["log.txt", "results.json", "results.md"]   # the device tool: <= 8 files
    results = json.loads((out_dir / "results.json").read_text())
    import torch
    assert results["dry_run"] and results["machine"]["torch"] == torch.__version__
    phases = results["phases"]
    assert {n: p["status"] for n, p in phases.items()} == {
        "flux-dev-ksampler": "ok", "flux-dev-compile": "ok", "flux-dev-deeptorch-sampler": "ok",
        "sdxl-ksampler": "dropped", "flux-dev-recompiles": "ok"}
    steady = phases["flux-dev-ksampler"]["results"]
    assert steady["size"] == "tiny" and steady["paths"] == ["ksampler"]
    assert all(steady["variants"][v]["s_per_step"] > 0 for v in ("eager", "peer", "deepytorch"))
    assert steady["variants"]["deepytorch"]["speedup_vs_peer"] > 0
    fresh = phases["flux-dev-compile"]["results"]["variants"]["deepytorch"]
    assert fresh["cold_compile_s"] > 0 and list(fresh["starts"]) == ["precompiled"]
    assert fresh["starts"]["precompiled"]["warm"]["start"] == "precompiled"     # the warm start loaded artifacts
    sampler = phases["flux-dev-deeptorch-sampler"]["results"]
    assert sampler["paths"] == ["deeptorch-sampler"]
    assert sampler["variants"]["deepytorch"]["paths"]["deeptorch-sampler"]["speedup_vs_eager"] > 0
    assert phases["flux-dev-recompiles"]["results"]["variants"]["deepytorch"]["recompiles_lora_swap"] == 0
    assert "no SDXL size small enough" in phases["sdxl-ksampler"]["why"]
    md = (out_dir / "results.md").read_text()
    assert "## flux-dev-ksampler: ok" in md and "ComfyUI's KSampler path:" in md
    # a budget the phases cannot fit: each dropped with its reason, the run still succeeds
    short = subprocess.run(cmd[:-4] + ["--budget", "30", "--out", str(tmp_path / "short")],
                           env=dict(os.environ, COMFYUI_PATH=carried.comfy_dir), capture_output=True, text=True,
                           timeout=300)
    assert short.returncode == 0, short.stdout[-3000:]
    dropped = json.loads((tmp_path / "short" / "results.json").read_text())["phases"]
    assert {p["status"] for p in dropped.values()} == {"dropped"}
    assert re.fullmatch(r"estimate 60 s > \d+ s left", dropped["flux-dev-ksampler"]["why"]), dropped
