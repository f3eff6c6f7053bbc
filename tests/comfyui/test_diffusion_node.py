"""The "Apply DeepyTorch to diffusion model" node through ComfyUI's real loaders, ModelPatcher, KSampler and
executor."""
import os
import sys

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from devkit.tiny_models import NAMES
from harness import workflows as wf

TOL = 1   # 1/255: float32 CPU, compiled vs eager


@pytest.fixture
def regional(comfy):
    return comfy.package.engine.regional


def graphs():
    return counters["stats"]["unique_graphs"]


def test_flux_inductor_matches_eager_and_eager_backend_is_identical(comfy, run, regional, deepy_log):
    eager = comfy.image(run(wf.flux_t2i(prefix="d_eager")), "11")
    compiled = comfy.image(run(wf.flux_t2i(prefix="d_ind", accel=wf.accel_inputs("inductor"))), "11")
    acc = regional.latest("Flux")
    assert acc.backend.name == "inductor" and acc.failed is None
    assert sorted(acc.compiled) == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert acc.compiled_calls == 2 * 4          # 2 steps x 4 blocks ran compiled code
    assert np.abs(eager - compiled).max() <= TOL
    same = comfy.image(run(wf.flux_t2i(prefix="d_eb", accel=wf.accel_inputs("eager"))), "11")
    assert np.array_equal(eager, same)
    assert "DeepyTorch: Flux: running eager (nothing compiled)" in deepy_log.text


def test_sdxl_inductor_matches_eager(comfy, run, regional):
    eager = comfy.image(run(wf.sdxl_t2i(prefix="d_sx_e")), "11")
    compiled = comfy.image(run(wf.sdxl_t2i(prefix="d_sx_c", accel=wf.accel_inputs("inductor"))), "11")
    acc = regional.latest("SDXL")
    assert acc.failed is None and acc.compiled_calls > 0
    assert np.abs(eager - compiled).max() <= TOL


def test_keys_stay_intact_while_compiled_model_is_loaded(comfy, run):
    import comfy.model_management as mm
    run(wf.flux_t2i(prefix="d_keys", accel=wf.accel_inputs("inductor")))
    loaded = [m.model for m in mm.current_loaded_models if type(m.model.model).__name__ == "Flux"]
    assert loaded, "the FLUX model should still be loaded after sampling"
    keys = list(loaded[0].model.state_dict())
    assert keys and not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize("order", ["lora_then_node", "node_then_lora"])
def test_lora_with_node_matches_eager_and_strength_change_does_not_recompile(comfy, run, regional, order):
    before = order == "node_then_lora"
    ref = {s: comfy.image(run(wf.flux_t2i(prefix=f"d_le{s}", lora=NAMES["flux_lora"], strength=s)), "11")
           for s in (1.0, 0.4)}
    assert np.abs(ref[1.0] - ref[0.4]).max() > 10             # the strength matters
    run(wf.flux_t2i(prefix="d_warm", lora=NAMES["flux_lora"], strength=1.0, accel=wf.accel_inputs(),
                    accel_before_lora=before), fresh=False)
    counters.clear()
    for s in (1.0, 0.4):
        img = comfy.image(run(wf.flux_t2i(prefix=f"d_lc{s}", lora=NAMES["flux_lora"], strength=s,
                                          accel=wf.accel_inputs(), accel_before_lora=before), fresh=False), "11")
        assert np.abs(img - ref[s]).max() <= TOL, f"strength {s}"
        assert regional.latest("Flux").compiled_calls > 0
    assert graphs() == 0, "a LoRA strength change must not recompile"


def test_failing_backend_completes_with_eager_result_and_logs_why(comfy, run, deepy_log):
    failing = comfy.sys_testpack.test_backends
    eager = comfy.image(run(wf.flux_t2i(prefix="d_fe", seed=7)), "11")
    img = comfy.image(run(wf.flux_t2i(prefix="d_ff", seed=7, accel=wf.accel_inputs(failing.FAILING))), "11")
    assert np.array_equal(img, eager)
    assert (f"DeepyTorch: Flux: backend '{failing.FAILING}' failed in region 'double_blocks.0' (BackendCompilerFailed:"
            in deepy_log.text)
    assert failing.FAILURE_MESSAGE in deepy_log.text
    assert "this model runs eager from now on" in deepy_log.text


def test_auto_picks_inductor_and_says_why_not_deepgpu(comfy, run, regional, deepy_log):
    run(wf.flux_t2i(prefix="d_auto", accel=wf.accel_inputs("auto")))
    assert regional.latest("Flux").backend.name == "inductor"
    assert ("DeepyTorch: Flux: auto chose backend 'inductor' (torch " in deepy_log.text)
    assert "skipped: deepgpu: deepgpu-torch is not installed" in deepy_log.text


def test_deepgpu_adapter_receives_blocks_and_sets_env(comfy, run, monkeypatch):
    doubles = os.path.join(os.path.dirname(os.path.dirname(__file__)), "doubles")
    monkeypatch.syspath_prepend(doubles)
    monkeypatch.delitem(sys.modules, "deepytorch", raising=False)
    for key in ("DEEPGPU_PUB_LS", "DEEPGPU_ENABLE_FLUX_LORA"):
        monkeypatch.delenv(key, raising=False)
    import deepytorch   # the labelled test double (tests/doubles), NOT Alibaba's package
    try:
        eager = comfy.image(run(wf.flux_t2i(prefix="d_dge", seed=3)), "11")
        # attention 'comfy': the double runs the blocks' own forward with ComfyUI's own attention, so the image is
        # eager ComfyUI's bit for bit (with SDPA it would differ by rounding)
        img = comfy.image(run(wf.flux_t2i(prefix="d_dg", seed=3, accel=wf.accel_inputs("auto", attention="comfy"))),
                          "11")
        received = [type(m.block).__name__ for m, _, _ in deepytorch.received]   # (wrapped: never our region)
        assert received == ["DoubleStreamBlock", "DoubleStreamBlock", "SingleStreamBlock", "SingleStreamBlock"]
        assert deepytorch.received[0][2] == {"DEEPGPU_PUB_LS": "true", "DEEPGPU_ENABLE_FLUX_LORA": "true"}
        assert np.array_equal(img, eager)
    finally:
        sys.modules.pop("deepytorch", None)


def test_deepgpu_torchscript_entry_traces_the_real_flux_blocks(comfy, run, regional, monkeypatch, tmp_path):
    """Alibaba's documented form, `deepytorch_inference.compile(torchscript_module)` (labelled test double,
    tests/doubles): each FLUX block is traced with torch.jit.trace at its first call and the double runs the trace;
    the image is eager ComfyUI's within 1/255 (ComfyUI's own attention), a LoRA strength change is seen."""
    doubles = os.path.join(os.path.dirname(os.path.dirname(__file__)), "doubles")
    os.symlink(os.path.join(doubles, "deepytorch_inference"), tmp_path / "deepytorch_inference")
    monkeypatch.syspath_prepend(str(tmp_path))   # only this double: the adapter takes the first entry point found
    monkeypatch.delitem(sys.modules, "deepytorch_inference", raising=False)
    import deepytorch_inference
    deepytorch_inference.received.clear()
    accel = wf.accel_inputs("deepgpu", attention="comfy")
    lora = dict(lora=NAMES["flux_lora"], accel_before_lora=True)
    try:
        eager = {s: comfy.image(run(wf.flux_t2i(prefix=f"d_ts_e{s}", seed=3, strength=s, **lora)), "11")
                 for s in (1.0, 0.4)}
        for s in (1.0, 0.4):
            img = comfy.image(run(wf.flux_t2i(prefix=f"d_ts{s}", seed=3, strength=s, accel=accel, **lora),
                                  fresh=False), "11")
            assert regional.latest("Flux").failed is None
            assert np.abs(img - eager[s]).max() <= TOL, f"strength {s}"
        assert len(deepytorch_inference.received) == 4       # one trace per block, for both prompts
        assert all(isinstance(m, torch.jit.ScriptModule) for m in deepytorch_inference.received)
    finally:
        sys.modules.pop("deepytorch_inference", None)


def test_two_resolutions_at_most_one_recompile_per_region(comfy, run, regional):
    for size in (64, 96):
        run(wf.flux_t2i(prefix=f"d_res{size}", width=size, height=size, accel=wf.accel_inputs()), fresh=False)
    acc = regional.latest("Flux")
    assert acc.failed is None
    assert acc.recompiles <= len(acc.compiled)
    counters.clear()
    run(wf.flux_t2i(prefix="d_res80", width=80, height=80, accel=wf.accel_inputs()), fresh=False)
    assert graphs() == 0, "a third size must reuse the dynamic graphs"


@pytest.mark.parametrize("arch", ["flux", "sdxl"])
def test_new_step_count_does_not_recompile(comfy, run, regional, deepy_log, arch):
    """ComfyUI hands the blocks its noise schedule (steps + 1 sigmas); SDXL's transformer block copies every option,
    which made each new step count recompile every SpatialTransformer (11 on SDXL) before it became dynamic."""
    t2i = wf.flux_t2i if arch == "flux" else wf.sdxl_t2i
    label = "Flux" if arch == "flux" else "SDXL"
    run(t2i(prefix=f"d_st2{arch}", steps=2, accel=wf.accel_inputs()), fresh=False)
    acc = regional.latest(label)
    before = acc.recompiles
    deepy_log.clear()
    counters.clear()
    compiled = comfy.image(run(t2i(prefix=f"d_st3{arch}", steps=3, accel=wf.accel_inputs()), fresh=False), "11")
    assert regional.latest(label) is acc and acc.compiled_calls > 0
    assert acc.recompiles == before and graphs() == 0, deepy_log.text
    eager = comfy.image(run(t2i(prefix=f"d_st3e{arch}", steps=3)), "11")
    assert np.abs(eager - compiled).max() <= TOL


def test_applied_twice_is_applied_once_and_eager_branch_stays_eager(comfy, run, regional):
    eager = comfy.image(run(wf.flux_t2i(prefix="d_twice_e", seed=2)), "11")
    p = wf.flux_t2i(prefix="d_twice", seed=2, accel=wf.accel_inputs())
    p["22"] = {"class_type": wf.ACCEL_NODE, "inputs": {"model": ["21", 0], **wf.accel_inputs()}}
    p["9"]["inputs"]["model"] = ["22", 0]
    # an eager branch from the same loader in the same graph
    p["30"] = dict(p["9"], inputs=dict(p["9"]["inputs"], model=["1", 0]))
    p["31"] = {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["3", 0]}}
    p["32"] = {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": "d_twice_plain"}}
    out = run(p)
    acc = regional.latest("Flux")
    assert len(acc.compiled) == 4 and acc.compiled_calls == 2 * 4   # one set of regions, one branch compiled
    assert np.abs(comfy.image(out, "11") - eager).max() <= TOL
    assert np.array_equal(comfy.image(out, "32"), eager)         # the plain branch ran ComfyUI's own forward
    # and again, with ComfyUI's cache (only the samplers re-run): no error, still correct
    p["9"]["inputs"]["seed"] = p["30"]["inputs"]["seed"] = 3
    again = comfy.image(run(wf.flux_t2i(prefix="d_twice_e3", seed=3)), "11")
    out = run(p, fresh=False)
    assert np.abs(comfy.image(out, "11") - again).max() <= TOL
    assert np.array_equal(comfy.image(out, "32"), again)


def test_bypassed_node_runs_eager(comfy, run, regional):
    eager = comfy.image(run(wf.flux_t2i(prefix="d_byp_e", seed=4)), "11")
    p = wf.flux_t2i(prefix="d_byp", seed=4)    # the same graph with the node removed = what bypass sends
    acc_before = regional.latest("Flux")
    img = comfy.image(run(p), "11")
    assert np.array_equal(img, eager)
    assert regional.latest("Flux") is acc_before


def test_user_error_propagates_with_its_message_and_the_model_stays_accelerated(comfy, run, regional, deepy_log):
    """A conditioning of the wrong width (FLUX's text encoders into SDXL) is the user's error: ComfyUI shows eager
    ComfyUI's own message, nothing is logged as a backend failure, and the next prompt runs compiled."""
    def wrong_width(p):
        p["30"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": NAMES["clip_l"], "clip_name2": NAMES["t5"],
                                                              "type": "flux"}}
        p["31"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny red fox", "clip": ["30", 0]}}
        p["9"]["inputs"]["positive"] = ["31", 0]
        return p

    with pytest.raises(RuntimeError) as eager_error:
        run(wrong_width(wf.sdxl_t2i(prefix="d_uee")))
    eager_message = str(eager_error.value).splitlines()[0]
    assert "execution failed: RuntimeError: " in eager_message
    run(wf.sdxl_t2i(prefix="d_ue1", accel=wf.accel_inputs()))
    acc = regional.latest("SDXL")
    calls = acc.compiled_calls
    deepy_log.clear()
    with pytest.raises(RuntimeError) as got:
        run(wrong_width(wf.sdxl_t2i(prefix="d_ue2", accel=wf.accel_inputs())), fresh=False)
    assert str(got.value).splitlines()[0] == eager_message
    assert acc.failed is None and "failed in region" not in deepy_log.text
    img = comfy.image(run(wf.sdxl_t2i(prefix="d_ue3", seed=3, accel=wf.accel_inputs()), fresh=False), "11")
    assert regional.latest("SDXL") is acc and acc.failed is None and acc.compiled_calls > calls
    eager = comfy.image(run(wf.sdxl_t2i(prefix="d_ue4", seed=3)), "11")
    assert np.abs(img - eager).max() <= 1


def test_prompt_length_and_batch_changes_recompile_at_most_once_per_region_then_dynamic(comfy, run, regional):
    """What users change between prompts: T5 tokens 256 -> more (a long prompt), batch 1 -> 2. Each change costs at
    most one recompile per compiled function, then the graphs are dynamic: a third length and batch compile
    nothing."""
    def prompt(words, batch, prefix, accel=True, seed=0):
        p = wf.flux_t2i(prefix=prefix, batch=batch, seed=seed, accel=wf.accel_inputs() if accel else None)
        p["4"]["inputs"]["text"] = " ".join(["a tiny red fox in the snow"] * words)
        return p

    run(prompt(1, 1, "d_len1"), fresh=False)                 # 256 T5 tokens (ComfyUI pads FLUX prompts to 256)
    acc = regional.latest("Flux")
    functions = len({f.__func__ for f in acc.compiled.values()})    # double + single block: 2 compiled functions
    run(prompt(60, 1, "d_len2"), fresh=False)                # > 256 tokens: the token dimension turns dynamic
    assert acc.recompiles <= functions, acc.recompiles
    after_length = acc.recompiles
    # batch 2: one more per function - a batch-1 graph cannot be dynamic in the batch (dynamo specialises size 1)
    run(prompt(60, 2, "d_len3"), fresh=False)
    assert acc.recompiles - after_length <= functions, acc.recompiles
    assert acc.failed is None and not acc.over_budget
    calls, recompiles = acc.compiled_calls, acc.recompiles
    counters.clear()
    img = comfy.image(run(prompt(90, 3, "d_len4", seed=5), fresh=False), "11")
    assert graphs() == 0 and acc.recompiles == recompiles
    assert acc.compiled_calls == calls + 2 * 4                 # 2 steps x 4 blocks, all compiled
    eager = comfy.image(run(prompt(90, 3, "d_len5", accel=False, seed=5)), "11")
    assert np.abs(img - eager).max() <= 1
