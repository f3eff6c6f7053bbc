"""Engine tests run WITHOUT ComfyUI: the package is imported as `comfyui_deepytorch` without running its __init__
(which registers ComfyUI nodes); only `comfyui_deepytorch.engine` is used."""
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOUBLES = os.path.join(ROOT, "tests", "doubles")

if "comfyui_deepytorch" not in sys.modules:
    pkg = types.ModuleType("comfyui_deepytorch")
    pkg.__path__ = [ROOT]
    sys.modules["comfyui_deepytorch"] = pkg


@pytest.fixture
def deepgpu_double(monkeypatch):
    """The labelled DeepGPU test double importable as `deepytorch` (removed again after the test)."""
    monkeypatch.syspath_prepend(DOUBLES)
    monkeypatch.delitem(sys.modules, "deepytorch", raising=False)
    for key in ("DEEPGPU_PUB_LS", "DEEPGPU_ENABLE_FLUX_LORA"):
        monkeypatch.delenv(key, raising=False)
    import deepytorch
    deepytorch.received.clear()
    yield deepytorch
    sys.modules.pop("deepytorch", None)


@pytest.fixture
def double(monkeypatch, tmp_path):
    """import_double(name): a labelled test double from tests/doubles, importable under `name` for this test only
    (alone: the others are not on the path, since the DeepGPU adapter takes the first entry point it finds); no
    DeepGPU entry point named by the environment."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("DEEPYTORCH_DEEPGPU_ENTRY", raising=False)
    names = []

    def import_double(name):
        import importlib
        file = name if os.path.isdir(os.path.join(DOUBLES, name)) else name + ".py"
        os.symlink(os.path.join(DOUBLES, file), os.path.join(tmp_path, file))
        importlib.invalidate_caches()
        monkeypatch.delitem(sys.modules, name, raising=False)
        names.append(name)
        module = importlib.import_module(name)
        getattr(module, "received", []).clear()
        return module
    yield import_double
    for name in names:
        sys.modules.pop(name, None)
