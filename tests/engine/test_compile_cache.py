"""Persistent compile cache (serverless cold starts): each case runs in a fresh process, as a new instance would."""
import json
import os
import stat
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, logging, sys, types
pkg = types.ModuleType("comfyui_deepytorch"); pkg.__path__ = [sys.argv[1]]; sys.modules["comfyui_deepytorch"] = pkg
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger("deepytorch").addHandler(H()); logging.getLogger("deepytorch").setLevel(logging.INFO)
import torch
from torch._dynamo.utils import counters
from comfyui_deepytorch.engine import compile_cache
root = compile_cache.configure(sys.argv[3] or None)
if sys.argv[2] == "compile":
    f = torch.compile(lambda x: torch.nn.functional.gelu(x @ x.T) * 3)
    with torch.inference_mode():
        f(torch.randn(8, 8))
    compile_cache.save_artifacts()
print(json.dumps({"root": root, "log": records, "hit": counters["inductor"]["fxgraph_cache_hit"],
                  "miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def run(env_cache, default=None, compile=True):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    if env_cache is not None:
        env["DEEPYTORCH_CACHE_DIR"] = env_cache
    else:
        env.pop("DEEPYTORCH_CACHE_DIR", None)
    args = [sys.executable, "-c", SCRIPT, ROOT, "compile" if compile else "configure-only", default or ""]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cold_then_warm_start_reuses_the_cache(tmp_path):
    cache = str(tmp_path / "nas" / "cache")          # missing: created
    cold = run(cache)
    assert cold["root"] == cache and cold["miss"] >= 1 and cold["hit"] == 0
    assert os.path.isdir(os.path.join(cache, "inductor"))
    saved = [f for f in os.listdir(cache) if f.startswith("artifacts-")]
    assert len(saved) == 1 and any("saved" in line and "compile artifacts" in line for line in cold["log"])
    warm = run(cache)                                   # a new process: the cold start of the next instance
    assert warm["hit"] >= 1 and warm["miss"] == 0
    assert any(f"loaded saved artifacts {saved[0]}" in line for line in warm["log"])


def test_default_dir_is_used_when_the_env_var_is_unset(tmp_path):
    result = run(None, default=str(tmp_path / "models" / "deepytorch-compile-cache"), compile=False)
    assert result["root"] == str(tmp_path / "models" / "deepytorch-compile-cache")


def test_read_only_dir_falls_back_with_a_warning(tmp_path):
    if os.geteuid() == 0:
        ro = "/proc/deepytorch-cache"               # root ignores permission bits: a truly unwritable place
    else:
        ro = str(tmp_path / "ro")
        os.makedirs(ro)
        os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    result = run(ro, compile=False)
    assert result["root"] is None
    assert any(f"compile cache: {ro} is not writable; using torch's default cache" in line
               for line in result["log"])


def test_foreign_artifacts_are_ignored_and_recompiled(tmp_path):
    from comfyui_deepytorch.engine import compile_cache
    cache = tmp_path / "cache"
    cache.mkdir()
    name = f"artifacts-{compile_cache._device_tag()}.bin"
    (cache / name).write_bytes(b"written by another torch / GPU")
    result = run(str(cache), compile=False)
    assert any(f"ignored unusable artifacts {name} (torch could not read them)" in line for line in result["log"])
