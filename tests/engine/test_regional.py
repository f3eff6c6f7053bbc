import logging

import pytest
import torch
from torch._dynamo.utils import counters

from comfyui_deepytorch.engine import backends, regional
from comfyui_deepytorch.engine.backends import CompileOptions


class Block(torch.nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x, transformer_options=None):
        return torch.nn.functional.gelu(self.lin(x)) + x


class FluxLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.img_in = torch.nn.Linear(16, 16)
        self.double_blocks = torch.nn.ModuleList([Block() for _ in range(3)])
        self.single_blocks = torch.nn.ModuleList([Block() for _ in range(2)])

    def forward(self, x):
        x = self.img_in(x)
        for i, b in enumerate(list(self.double_blocks) + list(self.single_blocks)):
            x = b(x, transformer_options={"block_index": i})
        return x


class UNetLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)),
                                                 torch.nn.Sequential(Block(), Block())])
        self.middle_block = torch.nn.Sequential(Block(), torch.nn.Linear(2, 2), Block())
        self.output_blocks = torch.nn.ModuleList([torch.nn.Sequential(Block())])


def install(model, accelerated):
    for path, fn in accelerated.region_forwards(model).items():
        setattr(model.get_submodule(path) if path else model, "forward", fn)


def uninstall(model):
    for m in model.modules():
        m.__dict__.pop("forward", None)


def test_find_regions_per_architecture():
    assert [p for p, _ in regional.find_regions(FluxLike())] == [
        "double_blocks.0", "double_blocks.1", "double_blocks.2", "single_blocks.0", "single_blocks.1"]
    # UNet: the composite layers inside each block (ComfyUI iterates the blocks' layers itself)
    assert [p for p, _ in regional.find_regions(UNetLike())] == [
        "input_blocks.1.0", "input_blocks.1.1", "middle_block.0", "middle_block.2", "output_blocks.0.0"]
    assert [p for p, _ in regional.find_regions(FluxLike(), "whole")] == [""]
    assert [p for p, _ in regional.find_regions(torch.nn.Linear(2, 2))] == [""]   # nothing repeated: whole


@pytest.fixture
def flux_like():
    torch._dynamo.reset()   # each test counts its own graphs
    torch.manual_seed(0)
    return FluxLike().eval()


def test_inductor_regions_match_eager_share_code_and_keep_keys(flux_like, caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    x = torch.randn(2, 16)
    keys = list(flux_like.state_dict())
    with torch.inference_mode():
        ref = flux_like(x)
    acc = regional.AcceleratedModel("FluxLike", backends.get_backend("inductor", "cpu"), CompileOptions())
    install(flux_like, acc)
    counters.clear()
    with torch.inference_mode():
        out = flux_like(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1            # 5 identical blocks share one compiled graph
    assert sorted(acc.compiled) == ["double_blocks.0", "double_blocks.1", "double_blocks.2", "single_blocks.0",
                                    "single_blocks.1"]
    assert list(flux_like.state_dict()) == keys               # no _orig_mod: LoRA keys intact
    assert "DeepyTorch: FluxLike: all 5 region(s) compiled" in caplog.text

    # weights changed in place (what ComfyUI's in-place LoRA patching does): new values, no recompile
    counters.clear()
    with torch.inference_mode():
        flux_like.double_blocks[1].lin.weight.mul_(1.5)
        out2 = flux_like(x)
    assert counters["stats"]["unique_graphs"] == 0 and acc.recompiles == 0
    uninstall(flux_like)
    with torch.inference_mode():
        torch.testing.assert_close(out2, flux_like(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out2, ref)


def test_failing_backend_falls_back_to_eager_for_the_whole_model(flux_like, caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")

    class Broken(backends.EagerBackend):
        name = "broken"

        def compile(self, module, options):
            def fail(*a, **k):
                raise RuntimeError("kernel generation exploded")
            return fail

    x = torch.randn(2, 16)
    with torch.inference_mode():
        ref = flux_like(x)
    acc = regional.AcceleratedModel("FluxLike", Broken(), CompileOptions())
    install(flux_like, acc)
    with torch.inference_mode():
        out = flux_like(x)
    assert torch.equal(out, ref)
    assert isinstance(acc.failed, RuntimeError)
    assert ("DeepyTorch: FluxLike: backend 'broken' failed in region 'double_blocks.0' (RuntimeError: kernel "
            "generation exploded); this model runs eager from now on") in caplog.text
    assert list(acc.compiled) == ["double_blocks.0"]          # no further compile attempts


def test_dynamic_auto_recompiles_once_per_region_for_new_sizes(flux_like, caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    acc = regional.AcceleratedModel("FluxLike", backends.get_backend("inductor", "cpu"), CompileOptions())
    install(flux_like, acc)
    with torch.inference_mode():
        for rows in (2, 3, 5):
            flux_like(torch.randn(rows, 16))
    assert acc.recompiles == 1                                 # 3 -> dynamic; 5 reuses it
    assert "DeepyTorch: FluxLike: recompiled Block: " in caplog.text
    # the log says why, in dynamo's words (its guard on the input's size)
    assert "size mismatch at index 0. expected 2, actual 3" in caplog.text


class PeerBlock(Block):
    """A block class that someone else (e.g. ComfyUI's TorchCompileModel) also compiles in this process."""

    def forward(self, x, transformer_options=None):
        return torch.nn.functional.gelu(self.lin(x)) * 0.5 + x


def test_regions_keep_their_own_dynamo_cache_when_another_compile_exhausts_the_class(caplog):
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    caplog.set_level(logging.WARNING)
    torch._dynamo.reset()
    block = PeerBlock()
    peer = torch.compile(PeerBlock.forward, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        for rows in range(1, 12):     # one static entry per shape, past dynamo's default limit of 8
            peer(block, torch.randn(rows, 16))
    assert "hit config.recompile_limit" in caplog.text
    assert len(_debug_get_cache_entry_list(PeerBlock.forward.__code__)) == 8   # the class's code is full

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([PeerBlock() for _ in range(2)])
    acc = regional.AcceleratedModel("Peer", backends.get_backend("inductor", "cpu"), CompileOptions())
    install(model, acc)
    counters.clear()
    with torch.inference_mode():
        x = torch.randn(12, 16)
        out = model.blocks[1](model.blocks[0](x))
        ref = type(block).forward(model.blocks[1], type(block).forward(model.blocks[0], x))
    assert counters["stats"]["unique_graphs"] == 1 and acc.compiled_calls == 2   # compiled, not skipped
    code = acc.compiled["blocks.0"].deepytorch_code
    assert code is not PeerBlock.forward.__code__ and code.co_name == "forward_deepytorch"
    assert len(_debug_get_cache_entry_list(code)) == 1          # one entry of our own, shared by both blocks
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_blocks_of_one_class_at_two_widths_compile_apart_without_recompiles(caplog):
    """A UNet's levels: one block class, a different width and activation size per level. One compiled function
    for all would count every level change as a recompile, towards one recompile limit."""
    caplog.set_level(logging.INFO, logger="deepytorch")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block(8), Block(8), Block(16), Block(16)])
    acc = regional.AcceleratedModel("Levels", backends.get_backend("inductor", "cpu"), CompileOptions())
    install(model, acc)

    def levels(rows):
        with torch.inference_mode():
            x8, x16 = torch.randn(rows, 8), torch.randn(rows * 4, 16)
            out = (model.layers[1](model.layers[0](x8)), model.layers[3](model.layers[2](x16)))
        uninstall(model)
        with torch.inference_mode():
            ref = (model.layers[1](model.layers[0](x8)), model.layers[3](model.layers[2](x16)))
        install(model, acc)
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)

    counters.clear()
    levels(4)
    assert counters["stats"]["unique_graphs"] == 2 and acc.recompiles == 0      # one graph per width
    fns = {p: acc.compiled[p].__func__ for p in acc.compiled}
    assert fns["layers.0"] is fns["layers.1"] and fns["layers.2"] is fns["layers.3"]
    assert fns["layers.0"].deepytorch_code is not fns["layers.2"].deepytorch_code   # own cache entries and limit
    assert "recompiled" not in caplog.text
    # one size history per class: the second width compiled dynamic at once, so a new resolution recompiles only
    # the first width's (static) graph, and a third one nothing
    levels(6)
    assert acc.recompiles == 1
    levels(9)
    assert acc.recompiles == 1


# -- where errors go, what proves compiled code ran, the recompile budget ------------------------------------------
OOM_BACKEND = "deepytorch_test_oom_once"
_oom_armed = []


def _oom_once(gm, example_inputs):
    """TEST-ONLY dynamo backend: its graph raises torch's out-of-memory error while armed (no real OOM on CPU)."""
    def run(*args):
        if _oom_armed:
            _oom_armed.pop()
            raise torch.OutOfMemoryError("deliberate out-of-memory of the test backend")
        return gm.forward(*args)
    return run


def _accelerated(backend="eager", width=16, **options):
    """Two blocks compiled with a dynamo backend (default: dynamo's 'eager', which compiles fast: a traced graph run
    as is - still counted as a compiled graph, not as an eager call)."""
    torch._dynamo.reset()
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([Block(width) for _ in range(2)])
    acc = regional.AcceleratedModel("Errors", backends.DynamoBackend(backend), CompileOptions(**options))
    install(model, acc)
    return model, acc


def _run(model, x):
    with torch.inference_mode():
        x = x.clone()   # an inference tensor into both blocks (else the second one's input differs in dispatch keys)
        return model.blocks[1](model.blocks[0](x))


def test_out_of_memory_in_a_region_propagates_and_the_model_stays_compiled():
    if OOM_BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=OOM_BACKEND)(_oom_once)
    model, acc = _accelerated(OOM_BACKEND)
    _oom_armed.append(True)
    with pytest.raises(torch.OutOfMemoryError, match="deliberate out-of-memory"):
        _run(model, torch.randn(4, 16))
    assert acc.failed is None and acc.compiled_calls == 0
    _run(model, torch.randn(4, 16))          # the retry (ComfyUI: VAE Decode tiled) runs compiled
    assert acc.failed is None and acc.compiled_calls == 2


def test_user_error_propagates_with_its_own_message_and_the_model_stays_compiled(caplog):
    caplog.set_level(logging.INFO, logger="deepytorch")
    model, acc = _accelerated()
    _run(model, torch.randn(4, 16))
    assert acc.compiled_calls == 2
    wrong = torch.randn(4, 12)                # a conditioning of the wrong width, say
    with pytest.raises(RuntimeError) as eager_error:
        type(model.blocks[0]).forward(model.blocks[0], wrong)
    with pytest.raises(RuntimeError) as got:
        _run(model, wrong)
    assert str(got.value) == str(eager_error.value)       # e.g. "mat1 and mat2 shapes cannot be multiplied ..."
    assert acc.failed is None
    assert not [r for r in caplog.records if r.name == "deepytorch" and r.levelno >= logging.WARNING]
    _run(model, torch.randn(4, 16))
    assert acc.failed is None and acc.compiled_calls == 4


class BreakingBlock(Block):
    def forward(self, x, transformer_options=None):
        x = self.lin(x)
        torch._dynamo.graph_break()
        return torch.nn.functional.gelu(x) + x


def test_fullgraph_true_raises_on_a_graph_break_naming_the_region_false_splits_it():
    for fullgraph in (True, False):
        torch._dynamo.reset()
        model = torch.nn.Module()
        model.blocks = torch.nn.ModuleList([BreakingBlock(), BreakingBlock()])
        acc = regional.AcceleratedModel("Breaks", backends.DynamoBackend("eager"), CompileOptions(fullgraph=fullgraph))
        install(model, acc)
        x = torch.randn(4, 16)
        if fullgraph:
            with pytest.raises(regional.FullGraphBreak, match=r"^Breaks: fullgraph is true, but region 'blocks.0' "
                                                              r"\(BreakingBlock\) has a graph break: .*Set the "
                                                              r"DeepyTorch node's input 'fullgraph' to false"):
                _run(model, x)
            assert acc.failed is None
        else:
            out = _run(model, x)
            assert acc.failed is None and acc.compiled_calls == 2
            torch.testing.assert_close(out, type(model.blocks[1]).forward(
                model.blocks[1], type(model.blocks[0]).forward(model.blocks[0], x)))


@pytest.fixture
def recompile_limit_2(monkeypatch):
    """dynamo's per-function recompile limit at 2 for the functions compiled in this test (and none left behind)."""
    monkeypatch.setattr(backends.inductor, "RECOMPILE_LIMIT", 2)
    backends.inductor._compiled_forward.cache_clear()
    yield
    backends.inductor._compiled_forward.cache_clear()


def test_calls_dynamo_runs_eagerly_are_not_counted_as_compiled(caplog, recompile_limit_2):
    """Past dynamo's own recompile limit it runs new shapes eagerly and says so only in its log."""
    caplog.set_level(logging.INFO, logger="deepytorch")
    model, acc = _accelerated(dynamic="false")
    acc.recompile_budget = 100           # dynamo's limit first
    for rows in (1, 2):
        _run(model, torch.randn(rows, 16))
    assert acc.compiled_calls == 4 and acc.skipped_calls == 0
    out = _run(model, torch.randn(3, 16))   # a third static shape: past the limit of 2
    assert acc.compiled_calls == 4 and acc.skipped_calls == 2
    assert "DeepyTorch: Errors: region 'blocks.0' (Block) ran eager inside torch.compile: dynamo skipped it" in caplog.text
    assert out.shape == (3, 16)


class NamedBlock(Block):
    """A block whose forward reads its own name (as SDXL's transformer block reads its block id from
    transformer_options): dynamo guards on the value, so blocks sharing the code each get a graph of their own."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x, transformer_options=None):
        return torch.nn.functional.gelu(self.lin(x)) * (1.0 + len(self.name) / 100) + x


def test_first_compiles_of_regions_that_share_code_are_no_recompiles(caplog, monkeypatch):
    """Ten regions guarded apart (ten graphs on one compiled function), budget 2: each region's first compile is
    no recompile, so none runs eager; a new shape then recompiles each region once, still within the budget."""
    caplog.set_level(logging.INFO, logger="deepytorch")
    monkeypatch.setenv(regional.RECOMPILE_BUDGET_ENV, "2")
    torch._dynamo.reset()
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([NamedBlock("b" * (i + 1)) for i in range(10)])
    acc = regional.AcceleratedModel("Named", backends.DynamoBackend("eager"), CompileOptions(dynamic="false"))
    install(model, acc)

    def run(rows):
        x = torch.randn(rows, 16)
        with torch.inference_mode():
            for b in model.blocks:
                x = b(x)
        return x
    counters.clear()
    run(1)
    assert counters["stats"]["unique_graphs"] == 10                    # one graph per region
    assert acc.recompiles == 0 and not acc.over_budget and acc.compiled_calls == 10
    run(2)                                                              # a new shape: each region recompiles once
    assert acc.recompiles == 10 and not acc.over_budget and acc.compiled_calls == 20
    assert "past the recompile budget" not in caplog.text


def test_a_recompile_is_counted_by_its_own_model_only_where_two_models_share_a_block_class():
    """A UNet and its ControlNet share block classes at several widths: each (class, width) has its own private copy
    of the forward. Code objects compare by value and torch keys its guard failures by code, so equal copies would
    pool their reasons: one model's recompile would be counted by the other, on every call (the recompile storm of
    SDXL + ControlNet). Here model B (width 32) recompiles on a new shape; model A (width 16) must count none of it."""
    from comfyui_deepytorch.engine.backends import inductor
    first, second = inductor.private_copy(Block.forward), inductor.private_copy(Block.forward)
    assert first.__code__ != second.__code__                    # unequal, yet one name / file / line for dynamo
    assert (first.__code__.co_name, first.__code__.co_firstlineno) == (second.__code__.co_name,
                                                                      second.__code__.co_firstlineno)
    torch._dynamo.reset()
    models = []
    for width in (16, 32):
        model = torch.nn.Module()
        model.blocks = torch.nn.ModuleList([Block(width), Block(width)])
        acc = regional.AcceleratedModel(f"W{width}", backends.DynamoBackend("eager"), CompileOptions(dynamic="false"))
        install(model, acc)
        models.append((model, acc, width))

    def run(i, rows):
        model, _, width = models[i]
        x = torch.randn(rows, width)
        with torch.inference_mode():
            for b in model.blocks:
                x = b(x)
    run(0, 1), run(1, 1)
    run(1, 2)                                   # B: a new shape, a recompile per region (its own)
    for _ in range(3):
        run(0, 1), run(1, 2), run(1, 1)
    a, b = models[0][1], models[1][1]
    assert (a.recompiles, b.recompiles) == (0, 2)
    assert a.compiled_calls == 2 * 4 and b.compiled_calls == 2 * 8 and not a.over_budget and not b.over_budget


def test_past_the_recompile_budget_regions_run_eager_with_a_warning_naming_them(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="deepytorch")
    monkeypatch.setenv(regional.RECOMPILE_BUDGET_ENV, "2")
    model, acc = _accelerated(dynamic="false")
    assert acc.recompile_budget == 2
    for rows in (1, 2, 3):               # the first compile, then 2 recompiles: within the budget
        _run(model, torch.randn(rows, 16))
    assert acc.compiled_calls == 6 and not acc.over_budget
    x = torch.randn(4, 16)
    out = _run(model, x)                 # the 3rd recompile: past the budget
    assert set(acc.over_budget) == {"blocks.0", "blocks.1"}
    assert ("DeepyTorch: Errors: region(s) blocks.0, blocks.1 (Block) recompiled 3 times, past the recompile budget "
            "of 2 (DEEPYTORCH_RECOMPILE_BUDGET): they run eager from now on. The guard that kept failing: ") in caplog.text
    before = acc.compiled_calls
    out2 = _run(model, torch.randn(5, 16))
    assert acc.compiled_calls == before and acc.failed is None
    ref = type(model.blocks[1]).forward(model.blocks[1], type(model.blocks[0]).forward(model.blocks[0], x))
    torch.testing.assert_close(out, ref)
    assert out2.shape == (5, 16)
