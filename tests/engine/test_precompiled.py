"""Precompiled regions (warm start without re-tracing): each case runs in a fresh process, as a new serverless
instance would, on a cache directory an earlier process left. "No dynamo tracing" is read from dynamo's own counter
of compiled frames (torch._dynamo.utils.counters["stats"]["unique_graphs"]); baked / loaded artifacts from
engine.precompiled.STATS."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A block class as ComfyUI writes them: its Linear is a nested class (comfy.ops.disable_weight_init.Linear), a helper
# from another module is traced into it, and a function comes in through an options dict (the attention override).
TOY = {
    "toy_helpers.py": """
        import torch
        def act(x):
            return torch.nn.functional.gelu(x)
        def act2(x):
            return torch.tanh(x)
    """,
    "toy_blocks.py": """
        import torch
        import toy_helpers
        class ops:
            class Linear(torch.nn.Linear):
                pass
        class Block(torch.nn.Module):
            def __init__(self, d):
                super().__init__()
                self.lin = ops.Linear(d, d)
            def forward(self, x, transformer_options={}):
                return x + toy_helpers.act(transformer_options["act"](self.lin(x)))
        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = torch.nn.ModuleList([Block(16), Block(16)])
            def forward(self, x, act):
                for b in self.blocks:
                    x = b(x, transformer_options={"act": act})
                return x
        class IndexedBlock(Block):
            def forward(self, x, transformer_options={}):
                # the block's index decides Python control flow (as ComfyUI's block ids do in patch lookups): every
                # block of the class needs a graph of its own
                y = super().forward(x, transformer_options)
                return y * 2 if transformer_options["index"] % 2 else y
        class IndexedModel(Model):
            def __init__(self):
                super().__init__()
                self.blocks = torch.nn.ModuleList([IndexedBlock(16) for _ in range(3)])
                self.seen = []
            def forward(self, x, act):
                for i, b in enumerate(self.blocks):
                    options = {"act": act, "index": i}
                    x = b(x, transformer_options=options)
                    self.seen.append(options.get("seen"))
                return x
        class RecordingBlock(IndexedBlock):
            def forward(self, x, transformer_options={}):
                # the index also written back into the options: a program that depends on it beyond its graph
                transformer_options["seen"] = transformer_options["index"]
                return super().forward(x, transformer_options)
        class RecordingModel(IndexedModel):
            def __init__(self):
                super().__init__()
                self.blocks = torch.nn.ModuleList([RecordingBlock(16) for _ in range(3)])
    """,
}

SCRIPT = r"""
import json, logging, sys, types
pkg = types.ModuleType("comfyui_deepytorch"); pkg.__path__ = [sys.argv[1]]; sys.modules["comfyui_deepytorch"] = pkg
sys.path.insert(0, sys.argv[3])
cfg = json.loads(sys.argv[4])
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger("deepytorch").addHandler(H()); logging.getLogger("deepytorch").setLevel(logging.INFO)
import torch
from torch._dynamo.utils import counters
from comfyui_deepytorch.engine import compile_cache, precompiled, regional
from comfyui_deepytorch.engine.backends import CompileOptions, InductorBackend
import toy_blocks, toy_helpers
compile_cache.configure(sys.argv[2])
torch.manual_seed(0)
model = getattr(toy_blocks, cfg.get("model", "Model"))()
acc = regional.AcceleratedModel("Toy", InductorBackend("cpu"), CompileOptions())
for path, fn in acc.region_forwards(model).items():
    setattr(model.get_submodule(path), "forward", fn)
act = getattr(toy_helpers, cfg.get("act", "act"))
x = torch.randn(cfg.get("rows", 4), 16, generator=torch.Generator().manual_seed(1))

def eager():
    y = x
    for i, b in enumerate(model.blocks):
        y = type(b).forward(b, y, {"act": act, "index": i})
    return y

out = {}
with torch.inference_mode():
    x = x.clone()   # an inference tensor, as ComfyUI's (else the second block's input differs in dispatch keys)
    out["diff"] = float((model(x, act) - eager()).abs().max())
    out["start"], out["start_counts"] = acc.start, acc.start_counts
    first = dict(precompiled.STATS), counters["stats"]["unique_graphs"], counters["inductor"]["fxgraph_cache_miss"]
    with torch.no_grad():
        model.blocks[0].lin.weight.mul_(1.5)     # a LoRA strength change: ComfyUI patches the weights in place
    patched = model(x, act)
    out["diff_patched"] = float((patched - eager()).abs().max())
    if cfg.get("then_act"):   # the same process, another function in the inputs
        act = getattr(toy_helpers, cfg["then_act"])
        out["diff_switched"] = float((model(x, act) - eager()).abs().max())
out["seen"] = getattr(model, "seen", [])[:3]
out.update(stats=dict(precompiled.STATS), graphs=counters["stats"]["unique_graphs"],
           inductor_misses=counters["inductor"]["fxgraph_cache_miss"], calls=acc.compiled_calls,
           after_patch_compiles=precompiled.STATS["bakes"] - first[0]["bakes"] + counters["stats"]["unique_graphs"]
           - first[1] + counters["inductor"]["fxgraph_cache_miss"] - first[2], log=records)
checks = [0]
matches = precompiled._Entry.matches
precompiled._Entry.matches = lambda *a: checks.__setitem__(0, checks[0] + 1) or matches(*a)
calls = acc.compiled_calls
with torch.inference_mode():
    for _ in range(3):   # steady calls: how many artifacts' guards were checked per block call
        model(x, act)
precompiled._Entry.matches = matches
out["checks_per_call"] = checks[0] / (acc.compiled_calls - calls)
from torch._dynamo.package import load_guards_state
out["guard_kinds"] = {}
for fn in acc.compiled.values():
    for e in getattr(getattr(fn, "__func__", fn), "entries", ()):
        for g in load_guards_state(e.fn._artifacts.guards_state).output_graph.guards:
            kind = getattr(g.create_fn, "func", g.create_fn).__name__
            out["guard_kinds"][kind] = out["guard_kinds"].get(kind, 0) + 1
            out["guard_user_stacks"] = out.get("guard_user_stacks", 0) + (g.user_stack is not None)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def toy(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    for name, text in TOY.items():
        (d / name).write_text(textwrap.dedent(text))
    return d


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """A cache directory one cold process left (each test works on its own copy), and that process's result."""
    root = tmp_path_factory.mktemp("baked")
    toy_dir = root / "toy"
    toy_dir.mkdir()
    for name, text in TOY.items():
        (toy_dir / name).write_text(textwrap.dedent(text))
    return root / "nas", start(root / "nas", toy_dir)


@pytest.fixture
def cache(baked, tmp_path):
    """A copy of the baked cache (the toy source is the same text, so its hashes match)."""
    import shutil
    shutil.copytree(baked[0], tmp_path / "nas")
    return tmp_path / "nas"


def start(cache, toy, background=False, env=None, **cfg):
    environ = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                                                                 "DEEPYTORCH_PRECOMPILE")}
    # a user's own inductor dir: the Makefile's, shared between runs (inductor's one-time CPU set-up is cached there;
    # what these tests count is DeepyTorch's artifacts and dynamo's frames, which live elsewhere), else a fresh one
    environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache / "inductor")
    environ.update(env or {})
    args = [sys.executable, "-c", SCRIPT, ROOT, str(cache), str(toy), json.dumps(cfg)]
    proc = subprocess.Popen(args, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc if background else result(proc)


def result(proc):
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])


def artifacts(cache):
    d = cache / "precompiled"
    return sorted(p for p in d.iterdir() if p.suffix == ".bin") if d.is_dir() else []


def test_cold_bakes_once_per_class_and_a_new_process_starts_without_tracing(baked, cache, toy):
    cold = baked[1]
    assert cold["stats"]["bakes"] == 1 and cold["stats"]["loads"] == 0   # two blocks, one class: one artifact
    assert cold["diff"] <= 1e-5 and cold["calls"] >= 2 and cold["start"] == "cold"
    assert len(artifacts(cache)) == 1
    warm = start(cache, toy)
    assert warm["stats"]["bakes"] == 0 and warm["stats"]["loads"] == 1
    assert warm["graphs"] == 0 and warm["inductor_misses"] == 0          # no dynamo frame, no inductor compile
    assert warm["start"] == "precompiled" and warm["diff"] <= 1e-5 and warm["calls"] == 4
    assert any("2 region(s) started from 1 precompiled artifact(s)" in line for line in warm["log"])
    # in-place weight patch (LoRA strength) seen by the loaded code, with nothing compiled
    assert warm["diff_patched"] <= 1e-5 and warm["after_patch_compiles"] == 0


def aliases(cache):
    return sorted(p for p in (cache / "precompiled").iterdir() if p.suffix == ".alias")


def test_blocks_whose_index_changes_the_graph_get_their_own_artifact_the_others_share_one(tmp_path, toy):
    """Three blocks of one class whose index is guarded (SDXL's SpatialTransformers: block ids): the odd one's
    index changes its graph (an artifact of its own), blocks 0 and 2 trace to the same program and share one
    artifact - block 2 runs it with block 0's index put in, verified by tracing both, and a new process loads it once
    through the alias the cold process wrote (old code: an artifact per block, 3). Each call checks one artifact's
    guards, cold and warm (trying the artifacts in turn checked the others' first: 2.5 checks a call on
    sdxl-narrow, 19 ms a step)."""
    cache = tmp_path / "nas"
    cold = start(cache, toy, model="IndexedModel")
    assert cold["diff"] <= 1e-5 and cold["stats"]["bakes"] == 2 and cold["stats"]["shares"] == 1
    assert len(artifacts(cache)) == 2 and len(aliases(cache)) == 1
    warm = start(cache, toy, model="IndexedModel")
    assert warm["diff"] <= 1e-5 and warm["diff_patched"] <= 1e-5 and warm["graphs"] == 0
    assert warm["stats"]["loads"] == 2 and warm["stats"]["aliases"] == 1 and warm["stats"]["bakes"] == 0
    assert warm["start"] == "precompiled" and warm["start_counts"]["artifacts_shared"] == 1
    assert cold["checks_per_call"] == warm["checks_per_call"] == 1.0


def test_a_block_whose_program_reads_its_index_back_shares_nothing(tmp_path, toy):
    """The index also written into the options (the program depends on it beyond its graph): no block runs another
    block's artifact, and each block's options hold its own index, cold and warm."""
    cache = tmp_path / "nas"
    cold = start(cache, toy, model="RecordingModel")
    assert cold["diff"] <= 1e-5 and cold["stats"]["bakes"] == 3 and cold["stats"]["shares"] == 0
    assert cold["seen"] == [0, 1, 2] and not aliases(cache)
    warm = start(cache, toy, model="RecordingModel")
    assert warm["diff"] <= 1e-5 and warm["stats"]["loads"] == 3 and warm["seen"] == [0, 1, 2]


def test_saved_guards_leave_out_the_hook_guards_torch_does_not_check_and_their_user_stacks(baked):
    """dynamo records a guard per hook dict of every submodule and, with skip_nnmodule_hook_guards (its default),
    checks none: saved, they only cost load time (43% of a SpatialTransformer's guards). Each guard's user-code
    stack is read only for failure messages: left out too (unpickling an SDXL warm start's guards 1.1 -> 0.8 s)."""
    kinds = baked[1]["guard_kinds"]
    assert kinds.get("TENSOR_MATCH", 0) >= 2 and "EMPTY_NN_MODULE_HOOKS_DICT" not in kinds, kinds
    assert baked[1]["guard_user_stacks"] == 0


def test_a_function_in_the_inputs_is_checked_by_name_never_run_stale(cache, toy):
    """torch cannot save the guard on a function's identity: the artifact checks it by name at call time (without
    that check the act() artifact would run for act2())."""
    r = start(cache, toy, then_act="act2")
    assert r["stats"]["loads"] == 1 and r["diff"] <= 1e-5
    assert r["diff_switched"] <= 1e-5 and r["stats"]["bakes"] == 1     # act2: its own artifact
    assert len(artifacts(cache)) == 2


def test_stale_corrupt_and_foreign_artifacts_are_ignored_with_the_reason(cache, toy):
    [saved] = artifacts(cache)
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])                             # truncated (a copy cut short)
    (saved.parent / (saved.name.split(".")[0] + ".foreign.bin")).write_bytes(b"written by something else")
    r = start(cache, toy)
    assert r["diff"] <= 1e-5 and r["stats"]["bakes"] == 1 and r["stats"]["ignored"] == 2
    assert any("ignored" in l and "truncated" in l for l in r["log"])
    assert any("ignored" in l and "not a DeepyTorch precompiled artifact" in l for l in r["log"])
    # a source file the artifact traced (not the block's own) changes, as in a ComfyUI update: never run stale code
    helpers = toy / "toy_helpers.py"
    helpers.write_text(helpers.read_text().replace("gelu(x)", "gelu(x) * 2"))
    r = start(cache, toy)
    assert r["diff"] <= 1e-5 and r["stats"]["bakes"] == 1 and r["stats"]["loads"] == 0
    assert any("the source of toy_helpers changed since it was compiled" in l for l in r["log"])


def test_opt_out_and_an_unwritable_store(tmp_path, toy):
    cache = tmp_path / "nas"
    off = start(cache, toy, env={"DEEPYTORCH_PRECOMPILE": "0"})
    assert off["stats"]["bakes"] == 0 and off["graphs"] >= 1 and off["diff"] <= 1e-5 and not artifacts(cache)
    assert any("precompiled regions are off (DEEPYTORCH_PRECOMPILE=0)" in l for l in off["log"])
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "precompiled").write_text("a file where the store's folder should be")
    r = start(blocked, toy)
    assert r["diff"] <= 1e-5 and r["stats"]["bakes"] == 1 and r["calls"] >= 2
    assert any("precompiled: could not save to" in l and "compiled in memory only" in l for l in r["log"])


def test_two_instances_baking_at_once_both_work_and_a_third_starts_warm(tmp_path, toy):
    cache = tmp_path / "nas"
    a, b = start(cache, toy, background=True), start(cache, toy, background=True)
    for r in (result(a), result(b)):
        assert r["diff"] <= 1e-5 and r["calls"] >= 2
    assert 1 <= len(artifacts(cache)) <= 2 and not [p for p in (cache / "precompiled").iterdir() if
                                                     p.name.startswith(".")]   # no half-written file left
    third = start(cache, toy)
    assert third["stats"]["bakes"] == 0 and third["graphs"] == 0 and third["start"] == "precompiled"
