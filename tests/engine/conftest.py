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
