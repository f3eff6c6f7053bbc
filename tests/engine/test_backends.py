import importlib.util
import logging

import torch

from comfyui_deepytorch.engine import backends
from comfyui_deepytorch.engine.backends import CompileOptions


def test_engine_imports_without_comfyui():
    assert importlib.util.find_spec("comfy") is None


def test_eager_is_always_available():
    assert backends.get_backend("eager").available() == (True, "always available")


def test_auto_picks_inductor_here_and_says_why_not_deepgpu(caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    chosen = backends.select_backend("auto", "cpu", "TinyModel")
    assert chosen.name == "inductor"
    line = caplog.records[-1].getMessage()
    assert line.startswith("DeepyTorch: TinyModel: auto chose backend 'inductor' (")
    assert "skipped: deepgpu: deepgpu-torch is not installed" in line


def test_unknown_backend_falls_back_to_eager_with_reason(caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    chosen = backends.select_backend("no_such_backend", "cpu", "M")
    assert chosen.name == "eager"
    assert ("DeepyTorch: M: backend 'no_such_backend' is not usable (no dynamo backend named 'no_such_backend' is "
            "registered); running eager") in caplog.text


def test_inductor_unavailable_without_cpp_compiler(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, reason = backends.get_backend("inductor", "cpu").available()
    assert (ok, reason) == (False, "no C++ compiler found (inductor needs one on CPU)")


def test_compile_options_map_to_torch_compile():
    assert CompileOptions().torch_compile_kwargs() == {"fullgraph": False, "dynamic": None}
    assert CompileOptions(mode="max-autotune", dynamic="true", fullgraph=True).torch_compile_kwargs() == \
        {"fullgraph": True, "dynamic": True, "mode": "max-autotune"}
    assert CompileOptions(dynamic="false").torch_compile_kwargs()["dynamic"] is False


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x) * 2


def test_deepgpu_adapter_against_test_double(deepgpu_double, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="deepytorch")
    chosen = backends.select_backend("auto", "cpu", "Flux")
    assert chosen.name == "deepgpu"
    assert "auto chose backend 'deepgpu' ('deepytorch' 0.0.0+test-double found)" in caplog.text
    block = Block()
    fn = chosen.compile(block, CompileOptions(mode="max-autotune"))
    x = torch.randn(2, 8)
    assert torch.equal(fn(x), block(x))
    module, options, env = deepgpu_double.received[0]
    assert module is block
    assert options == {"fullgraph": False, "dynamic": None, "mode": "max-autotune"}
    assert env == {"DEEPGPU_PUB_LS": "true", "DEEPGPU_ENABLE_FLUX_LORA": "true"}


def test_deepgpu_keeps_env_vars_the_user_set(deepgpu_double, monkeypatch):
    monkeypatch.setenv("DEEPGPU_PUB_LS", "false")
    backends.get_backend("deepgpu").compile(Block(), CompileOptions())
    assert deepgpu_double.received[0][2] == {"DEEPGPU_PUB_LS": "false", "DEEPGPU_ENABLE_FLUX_LORA": "true"}


def test_deepgpu_unavailable_reason():
    ok, reason = backends.get_backend("deepgpu").available()
    assert not ok and reason.startswith("deepgpu-torch is not installed")
