import importlib.util
import logging
import types

import pytest
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
    assert ("auto chose backend 'deepgpu' ('deepytorch' 0.0.0+test-double, deepytorch.compile(module) found)"
            in caplog.text)
    block = Block()
    fn = chosen.compile(block, CompileOptions(mode="max-autotune"))
    x = torch.randn(2, 8)
    assert torch.equal(fn(x), block(x))
    module, options, env = deepgpu_double.received[0]
    assert module.block is block     # wrapped: see test_deepgpu_module_entry_never_calls_the_installed_region
    assert options == {"fullgraph": False, "dynamic": None, "mode": "max-autotune"}
    assert env == {"DEEPGPU_PUB_LS": "true", "DEEPGPU_ENABLE_FLUX_LORA": "true"}


def test_deepgpu_keeps_env_vars_the_user_set(deepgpu_double, monkeypatch):
    monkeypatch.setenv("DEEPGPU_PUB_LS", "false")
    backends.get_backend("deepgpu").compile(Block(), CompileOptions())
    assert deepgpu_double.received[0][2] == {"DEEPGPU_PUB_LS": "false", "DEEPGPU_ENABLE_FLUX_LORA": "true"}


def test_deepgpu_unavailable_reason():
    ok, reason = backends.get_backend("deepgpu").available()
    assert not ok and reason.startswith("deepgpu-torch is not installed")


class OptionsBlock(torch.nn.Module):
    """A block called as ComfyUI calls FLUX's: tensors, an option dict (holding a tensor and a function), an int."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, pe=None, options=None, repeat=1):
        act = options["act"] if options else torch.relu
        for _ in range(repeat):
            x = act(self.lin(x)) + (pe if pe is not None else 0) * options["scale"]
        return x, x.sum(-1)


def installed(block, backend):
    """The block as DeepyTorch leaves it: the backend's callable installed as the block's own `forward` attribute
    (as ComfyUI's object patches do), so a backend that calls the module it got would call itself."""
    fn = backend.compile(block, CompileOptions())
    block.forward = fn
    return block


def call(block, x, **kw):
    with torch.inference_mode():   # as ComfyUI samples
        return block(x, pe=torch.ones(8), options={"act": torch.tanh, "scale": torch.tensor(0.5)}, **kw)


def eager(block, x, **kw):
    with torch.inference_mode():
        return type(block).forward(block, x, pe=torch.ones(8), options={"act": torch.tanh, "scale": torch.tensor(0.5)},
                                   **kw)


def test_deepgpu_module_entry_never_calls_the_installed_region(double):
    deepytorch = double("deepytorch")
    block = installed(OptionsBlock(), backends.get_backend("deepgpu"))
    x = torch.randn(2, 8)
    out = call(block, x)   # the double calls the module it got: the installed region would recurse
    assert all(torch.equal(a, b) for a, b in zip(out, eager(block, x)))
    (got, _, _), = deepytorch.received
    assert got is not block and got.block is block and dict(got.named_parameters())["block.lin.weight"] is \
        block.lin.weight


@pytest.mark.parametrize("entry", ["deepytorch_inference", "aiacctorch", "user"])
def test_deepgpu_torchscript_entries_trace_each_block_see_weight_updates_and_retrace_new_shapes(
        double, monkeypatch, caplog, entry):
    caplog.set_level(logging.INFO, logger="deepytorch")
    if entry == "user":
        double_module = double("deepgpu_entry")
        monkeypatch.setenv("DEEPYTORCH_DEEPGPU_ENTRY", "deepgpu_entry:optimize")
        found = "DEEPYTORCH_DEEPGPU_ENTRY=deepgpu_entry:optimize found"
    else:
        double_module = double(entry)
        found = f"'{entry}' 0.0.0+test-double, {entry}.compile(torchscript) found"
    chosen = backends.select_backend("auto", "cpu", "Flux")
    assert chosen.name == "deepgpu" and f"auto chose backend 'deepgpu' ({found})" in caplog.text
    blocks = [installed(OptionsBlock(), chosen) for _ in range(2)]
    x = torch.randn(2, 8)
    for block in blocks:
        out = call(block, x)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, eager(block, x)))
    assert len(double_module.received) == 2    # a trace holds its block's weights: one per block
    assert all(isinstance(m, torch.jit.ScriptModule) for m in double_module.received)
    with torch.no_grad():
        blocks[0].lin.weight.mul_(0.5)         # an in-place LoRA patch
    out = call(blocks[0], x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, eager(blocks[0], x)))
    call(blocks[0], x)
    assert len(double_module.received) == 2    # the same inputs again: the same trace
    out = call(blocks[0], torch.randn(3, 8), repeat=2)   # a new shape and a new int: traced again
    assert len(double_module.received) == 3


def test_deepgpu_dynamo_entry_is_used_through_torch_compile(double, caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    deepgpu_torch = double("deepgpu_torch")
    before = len(deepgpu_torch.graphs)
    chosen = backends.select_backend("auto", "cpu", "Flux")
    assert "('deepgpu_torch' 0.0.0+test-double, dynamo backend 'deepgpu' found)" in caplog.text
    block = installed(OptionsBlock(), chosen)
    x = torch.randn(2, 8)
    out = call(block, x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, eager(block, x)))
    assert len(deepgpu_torch.graphs) > before    # dynamo handed the double a graph


def test_deepgpu_failed_trace_falls_back_to_eager_with_the_reason(double, caplog):
    from comfyui_deepytorch.engine import regional
    caplog.set_level(logging.INFO, logger="deepytorch")
    double("deepytorch_inference")

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return types.SimpleNamespace(out=self.lin(x))   # torch.jit.trace cannot output an object

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Untraceable()])

        def forward(self, x):
            return self.blocks[0](x).out

    model = Model()
    acc = regional.AcceleratedModel("Toy", backends.get_backend("deepgpu"), CompileOptions())
    for path, fn in acc.region_forwards(model).items():
        setattr(model.get_submodule(path), "forward", fn)
    x = torch.randn(2, 8)
    with torch.inference_mode():
        out = model(x)
        ref = type(model.blocks[0]).forward(model.blocks[0], x).out
    assert torch.equal(out, ref) and acc.failed is not None
    assert "DeepyTorch: Toy: backend 'deepgpu' failed in region 'blocks.0' (RuntimeError:" in caplog.text
    assert "this model runs eager from now on" in caplog.text


def test_deepgpu_named_entry_that_cannot_load_says_why(double, monkeypatch):
    monkeypatch.setenv("DEEPYTORCH_DEEPGPU_ENTRY", "no_such_module:compile")
    ok, reason = backends.get_backend("deepgpu").available()
    assert not ok and reason.startswith("DEEPYTORCH_DEEPGPU_ENTRY='no_such_module:compile' cannot be loaded: "
                                        "ModuleNotFoundError")


def test_deepgpu_environment_defaults_are_logged_once(deepgpu_double, caplog):
    from comfyui_deepytorch.engine.backends import deepgpu
    caplog.set_level(logging.INFO, logger="deepytorch")
    deepgpu._env_logged.clear()
    for _ in range(2):
        backends.get_backend("deepgpu").compile(Block(), CompileOptions())
    lines = [r.getMessage() for r in caplog.records if "DeepGPU: environment" in r.getMessage()]
    assert lines == ["DeepyTorch: DeepGPU: environment DEEPGPU_PUB_LS=true, DEEPGPU_ENABLE_FLUX_LORA=true "
                     "(process-wide; the variables you set yourself are kept)"]
