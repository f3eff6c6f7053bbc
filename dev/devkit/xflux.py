"""Where x-flux-comfyui is (scripts/get-xflux puts it in XFLUX_DIR) and its modules imported as XLabs' code, without
its package __init__ (which registers nodes and makes model folders inside ComfyUI)."""
import importlib
import os
import sys
import types

XFLUX_DIR = os.environ.get("XFLUX_DIR") or os.path.expanduser(
    "~/.cache/comfyui-deepytorch/custom_nodes/x-flux-comfyui")
_PACKAGE = "deepytorch_devkit_xflux"


def module(name):
    """x-flux-comfyui's module `name` (e.g. "sampling", "xflux.src.flux.controlnet"); ImportError when absent."""
    if not os.path.isfile(os.path.join(XFLUX_DIR, "sampling.py")):
        raise ImportError(f"x-flux-comfyui not found in {XFLUX_DIR} (scripts/get-xflux)")
    if _PACKAGE not in sys.modules:
        pkg = types.ModuleType(_PACKAGE)
        pkg.__path__ = [XFLUX_DIR]
        sys.modules[_PACKAGE] = pkg
    return importlib.import_module(f"{_PACKAGE}.{name}")
