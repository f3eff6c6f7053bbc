"""Persistent compile cache: torch.compile's reusable artifacts in one directory that survives the process, so a
cold-started serverless instance (e.g. Function Compute with the models on NAS/OSS) skips most of the compile.

The directory (DEEPYTORCH_CACHE_DIR, else a default the caller passes, e.g. inside ComfyUI's models dir) holds
  precompiled/                 precompiled regions (engine.precompiled): loaded without dynamo tracing
  inductor/                    TORCHINDUCTOR_CACHE_DIR (unless the user set one): FX-graph / AOT-autograd caches
  inductor/triton/             TRITON_CACHE_DIR (GPU kernels)
  artifacts-<torch>-<device>.bin   torch.compiler.save_cache_artifacts() ("mega-cache"), loaded at start-up
Entries of another torch or GPU are keyed apart (inductor's own keys include them; the artifacts file is per torch
version and device), so they are ignored and recompiled. A missing directory is created; a read-only or unusable
one is reported and torch's default cache is used; two processes can share one (inductor writes atomically, the
artifacts file is replaced atomically).
"""
import os
import re
import tempfile

import torch

from . import log

ENV = "DEEPYTORCH_CACHE_DIR"
_state = {}


def _user_inductor_dir():
    """TORCHINDUCTOR_CACHE_DIR if the user set it (importing torch._dynamo sets it to torch's default itself)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        torch_default = default_cache_dir()
    except Exception:   # pragma: no cover - torch internals moved: treat any value as the user's
        torch_default = None
    return current if current and current != torch_default else None


def _device_tag():
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"torch{torch.__version__}-{name}")


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def configure(default_dir=None):
    """Point torch.compile's caches at the persistent directory (once per process). Returns the directory or None.
    A TORCHINDUCTOR_CACHE_DIR the user set stays inductor's directory; this pack's own artifacts (precompiled
    regions, the artifacts file) still go to the persistent directory, so the user's choice never costs the warm
    start."""
    if "dir" in _state:
        return _state["dir"]
    root = os.environ.get(ENV) or default_dir
    _state["dir"] = None
    if not root:
        return None
    if not _writable(root):
        log.warning("compile cache: %s is not writable; using torch's default cache (compiles will not persist)",
                    root)
        return None
    user_dir = _user_inductor_dir()
    if user_dir:
        inductor = f"inductor's own cache: TORCHINDUCTOR_CACHE_DIR={user_dir}, set by the environment"
    else:
        inductor_dir = os.path.join(root, "inductor")
        if not _writable(inductor_dir):
            log.warning("compile cache: %s is not writable; using torch's default cache (compiles will not persist)",
                        inductor_dir)
            return None
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(inductor_dir, "triton"))
        inductor = "inductor's cache inside it"
    _state["dir"] = root
    _state["artifacts"] = os.path.join(root, f"artifacts-{_device_tag()}.bin")
    loaded = _load_artifacts(_state["artifacts"])
    log.info("compile cache: %s (%s; %s)", root, inductor, loaded)
    return root


def directory():
    """The persistent directory configure() chose, or None."""
    return _state.get("dir")


def status(default_dir=None):
    """{dir, writable, configured} for a status page: the directory in use, or the one the first compile will use."""
    root = _state.get("dir") or os.environ.get(ENV) or default_dir
    return {"dir": root, "writable": bool(root) and _writable(root), "configured": "dir" in _state}


def _load_artifacts(path):
    loader = getattr(torch.compiler, "load_cache_artifacts", None)
    if loader is None:
        return "this torch has no cache artifacts API; inductor's on-disk cache only"
    if not os.path.isfile(path):
        return "no saved artifacts yet"
    try:
        with open(path, "rb") as f:
            info = loader(f.read())
        if info is None:   # torch warns and returns None for corrupt or foreign bytes
            return f"ignored unusable artifacts {os.path.basename(path)} (torch could not read them)"
        return f"loaded saved artifacts {os.path.basename(path)}"
    except Exception as e:   # an unreadable or foreign file must never stop the workflow
        return f"ignored unusable artifacts {os.path.basename(path)} ({type(e).__name__}: {e})"


def save_artifacts():
    """After a model finished compiling: save torch's cache artifacts next to the on-disk cache (atomic replace)."""
    path = _state.get("artifacts")
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if not path or saver is None:
        return None
    try:
        result = saver()
        if not result:
            return None
        data = result[0]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".artifacts-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        log.info("compile cache: saved %d KiB of compile artifacts to %s", len(data) // 1024, path)
        return path
    except Exception as e:
        log.warning("compile cache: could not save artifacts to %s (%s: %s)", path, type(e).__name__, e)
        return None
