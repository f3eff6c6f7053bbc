"""Apply DeepyTorch step cache through ComfyUI's real loaders, ModelPatcher, KSampler / samplers, ControlNet and the
DeepTorch Sampler (nodes called directly): the tiny FLUX-dev (first-block decision) and the tiny SDXL checkpoint
(whole-model decision). A "forced skip" is a threshold high enough that every step the rules allow is skipped;
what a skipped step returned is checked against the cached-residual formula from tensors seen by forward hooks on
the real blocks (torch hooks on module instances, no ComfyUI code replaced)."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from comfyui.sampler_helpers import parts, sample_direct  # noqa: F401 (parts: a pytest fixture, requested by name)
from devkit.tiny_models import NAMES

FORCE = 1e9            # a threshold no estimate reaches: every step the rules allow is skipped
OPEN = dict(start=0.0, end=1.0, max_consecutive=100)


@pytest.fixture(scope="module")
def models(comfy):
    """{"flux": (model, positive, negative, latent channels), "sdxl": (...)}, loaded with ComfyUI's node classes."""
    import nodes
    with torch.inference_mode():
        flux = nodes.UNETLoader().load_unet(NAMES["flux_unet"], "default")[0]
        fclip = nodes.DualCLIPLoader().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
        sdxl, sclip = nodes.CheckpointLoaderSimple().load_checkpoint(NAMES["sdxl"])[:2]
        enc = nodes.CLIPTextEncode()
        return {"flux": (flux, enc.encode(fclip, "a tiny red fox")[0], enc.encode(fclip, "blurry")[0], 16),
                "sdxl": (sdxl, enc.encode(sclip, "a tiny red fox")[0], enc.encode(sclip, "blurry")[0], 4)}


def cached(comfy, model, threshold=FORCE, verify=False, **window):
    node = comfy.package.nodes.step_cache.ApplyDeepyTorchStepCache()
    w = dict(OPEN, **window) if threshold else dict(dict(start=0.15, end=0.95, max_consecutive=3), **window)
    m = node.apply(model, threshold, w["start"], w["end"], w["max_consecutive"], verify)[0]
    return m, comfy.package.nodes.step_cache.step_cache_of(m)


def ksample(models, kind, model=None, steps=6, cfg=1.0, sampler="euler", batch=1, size=8, denoise=1.0, pos=None,
            neg=None, latent=None, seed=0):
    import nodes
    base, p, n, channels = models[kind]
    latent = {"samples": torch.zeros(batch, channels, size, size)} if latent is None else latent
    scheduler = "simple" if kind == "flux" else "normal"
    with torch.inference_mode():
        return nodes.KSampler().sample(base if model is None else model, seed, steps, cfg, sampler, scheduler,
                                       p if pos is None else pos, n if neg is None else neg, latent,
                                       denoise=denoise)[0]["samples"]


class Seen:
    """What the real modules computed, per model call (forward hooks; tensors cloned: ComfyUI adds ControlNet
    residuals in place). A call starts at the first double block (FLUX: every call runs it) or the UNet."""

    def __init__(self, model, kind):
        dm = model.model.diffusion_model
        self.calls, self.hooks = [], []
        start = dm.double_blocks[0] if kind == "flux" else dm
        self.hooks.append(start.register_forward_pre_hook(lambda mod, args: self.calls.append({})))
        if kind == "flux":
            self._hook(dm.double_blocks[0], "first")
            self._hook(dm.single_blocks[-1], "last")
            self._hook(dm.final_layer, "final", inputs=True)

    def _hook(self, module, name, inputs=False):
        def hook(mod, args, kwargs, out):
            entry = self.calls[-1]
            if inputs:
                entry[name + "_in"] = args[0].clone()
            entry[name] = tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
        self.hooks.append(module.register_forward_hook(hook, with_kwargs=True))

    def close(self):
        for h in self.hooks:
            h.remove()


def test_threshold_zero_is_bit_identical_on_ksampler(comfy, models, deepy_log):
    """threshold 0: every step computed, the latents equal (torch.equal) the same graph without the node."""
    for kind, cfg, batch in (("flux", 1.0, 1), ("flux", 1.0, 2), ("sdxl", 5.0, 1), ("sdxl", 5.0, 2)):
        plain = ksample(models, kind, cfg=cfg, batch=batch)
        m, cache = cached(comfy, models[kind][0], threshold=0.0)
        out = ksample(models, kind, m, cfg=cfg, batch=batch)
        assert torch.equal(out, plain), (kind, cfg, batch)
        assert cache.runs[-1]["schedule"] == "CCCCCC" and cache.tensor_count() == 0
    label = type(models["sdxl"][0].model).__name__
    assert f"DeepyTorch: step cache ({label}, whole model): 6 step(s), 6 computed, 0 skipped: CCCCCC" \
        in deepy_log.text
    assert "DeepyTorch: step cache (Flux, first block): 6 step(s), 6 computed, 0 skipped: CCCCCC" in deepy_log.text


def test_threshold_zero_is_bit_identical_on_the_deeptorch_sampler(comfy, parts):
    m, cache = cached(comfy, parts.model, threshold=0.0)
    for cfg_start in (20, 0):   # without and with true CFG (a negative branch)
        plain = sample_direct(comfy, parts, steps=5, cfg_start=cfg_start)
        assert torch.equal(sample_direct(comfy, parts, model=m, steps=5, cfg_start=cfg_start), plain)
        assert cache.runs[-1]["schedule"] == "CCCCC" and cache.tensor_count() == 0


def _check_flux_formula(calls, schedule, branch_of=lambda i: 0):
    """Each skipped call's final-layer input is (txt0, img0 of this call) + the residual of the remaining blocks at
    the branch's last computed call, exactly; the last single block ran on computed calls only."""
    last = {}
    skipped = 0
    for i, c in enumerate(calls):
        img0, txt0 = c["first"]
        base = torch.cat((txt0, img0), 1)
        b = branch_of(i)
        if "last" in c:
            last[b] = c["last"] - base
            assert c["step"] == "C"
            continue
        assert c["step"] == "S" and b in last
        expect = (base + last[b])[:, txt0.shape[1]:, ...]
        assert torch.equal(c["final_in"], expect), i
        skipped += 1
    assert skipped == schedule.count("S") * (len(calls) // len(schedule))
    return skipped


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_forced_skip_equals_the_cached_residual_formula_on_ksampler_flux(comfy, models, batch, cfg):
    m, cache = cached(comfy, models["flux"][0])
    seen = Seen(models["flux"][0], "flux")
    try:
        ksample(models, "flux", m, cfg=cfg, batch=batch)
    finally:
        seen.close()
    sched = cache.runs[-1]["schedule"]
    assert sched == "CSSSSC"      # the first step has no cache, the last is always computed
    per_step = len(seen.calls) // len(sched)
    for i, c in enumerate(seen.calls):
        c["step"] = sched[i // per_step]
    assert _check_flux_formula(seen.calls, sched, branch_of=lambda i: i % per_step) == 4 * per_step
    assert cache.tensor_count() == 0 and cache.peak_tensors == 2


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_forced_skip_equals_the_cached_output_formula_on_ksampler_sdxl(comfy, models, batch, cfg):
    """Whole-model decision: a skipped call returns x - sigma * eps of the branch's last computed call, with
    eps = (x - denoised) / sigma there; the diffusion model does not run on skipped calls."""
    m, cache = cached(comfy, models["sdxl"][0], max_consecutive=2)
    calls = []

    def outer(apply_model, args):   # outside the step cache's wrapper: what the sampler got
        out = inner(apply_model, args)
        calls.append((args["input"].clone(), args["timestep"].clone(), out.clone()))
        return out
    inner = m.model_options["model_function_wrapper"]
    m.set_model_unet_function_wrapper(outer)
    seen = Seen(m, "sdxl")
    try:
        ksample(models, "sdxl", m, cfg=cfg, batch=batch, steps=8)
    finally:
        seen.close()
    sched = cache.runs[-1]["schedule"]
    assert sched == "CCSSCSSC"    # two computed steps give the rate; at most 2 skips in a row; last computed
    assert len(calls) == 8 and len(seen.calls) == sched.count("C")
    last = None
    for (x, t, out), step in zip(calls, sched):
        s = t.reshape(-1, 1, 1, 1)
        if step == "C":
            last = (x - out) / s
        else:
            assert torch.equal(out, x - s * last)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg_start", [20, 0])
def test_forced_skip_on_the_deeptorch_sampler_per_branch(comfy, parts, cfg_start, batch):
    """XLabs' positive and negative calls are two branches decided together per step: each skipped call uses its own
    branch's cached residual."""
    m, cache = cached(comfy, parts.model)
    seen = Seen(parts.model, "flux")
    try:
        sample_direct(comfy, parts, model=m, steps=5, cfg_start=cfg_start, latent={"samples": torch.zeros(batch, 4,
                                                                                                         8, 8)})
    finally:
        seen.close()
    sched = cache.runs[-1]["schedule"]
    assert sched == "CSSSC"
    per_step = 2 if cfg_start == 0 else 1
    assert len(seen.calls) == 5 * per_step
    for i, c in enumerate(seen.calls):
        c["step"] = sched[i // per_step]
    assert _check_flux_formula(seen.calls, sched, branch_of=lambda i: i % per_step) == 3 * per_step
    assert cache.tensor_count() == 0


@pytest.mark.parametrize("sampler,calls_per_step", [("euler", 1), ("euler_ancestral", 1), ("heun", 2),
                                                    ("dpmpp_2m", 1), ("uni_pc", 1)])
def test_samplers_and_changes_between_runs(comfy, models, sampler, calls_per_step):
    """Each model evaluation group is a step (heun evaluates twice per step but the last): the schedule's length is
    the number of model calls; steps, resolution and batch changed between runs, and a second KSampler at
    denoise 0.5 on the first's result, all run; every step allowed is skipped and the image stays finite."""
    for kind in ("flux", "sdxl"):
        m, cache = cached(comfy, models[kind][0], max_consecutive=2)
        seen = Seen(models[kind][0], kind)
        try:
            for steps, batch, size in ((6, 1, 8), (4, 2, 8), (5, 1, 12)):
                seen.calls.clear()
                out = ksample(models, kind, m, steps=steps, sampler=sampler, batch=batch, size=size)
                run = cache.runs[-1]
                n_calls = steps * calls_per_step - (calls_per_step - 1)
                assert len(run["schedule"]) == n_calls, (kind, steps, run)
                ran = [c for c in seen.calls if kind == "sdxl" or "last" in c]    # the whole model ran
                assert run["computed"] == len(ran) and run["skipped"] >= 1, (kind, steps, run)
                assert torch.isfinite(out).all() and out.shape[0] == batch
            second = ksample(models, kind, m, steps=6, sampler=sampler, denoise=0.5, latent={"samples": out})
            assert torch.isfinite(second).all() and len(cache.runs[-1]["schedule"]) == 6 * calls_per_step - (
                calls_per_step - 1)
            assert cache.tensor_count() == 0 and cache.peak_tensors <= 2
        finally:
            seen.close()


@pytest.mark.parametrize("order", ["cache_then_compile", "compile_then_cache"])
def test_compiled_model_skips_and_computes_without_recompiling(comfy, models, order):
    """With "Apply DeepyTorch to diffusion model" (inductor, regional) in either order: the second run compiles
    nothing; on computed steps every region ran compiled, on skipped steps only the first double block; the result
    is the eager cached one within float32 compile tolerance."""
    accel = comfy.package.nodes.diffusion.ApplyDeepyTorchDiffusionModel()
    base = models["flux"][0]
    eager_cached = ksample(models, "flux", cached(comfy, base, max_consecutive=2)[0], steps=6)
    if order == "cache_then_compile":
        m, cache = cached(comfy, base, max_consecutive=2)
        m = accel.apply(m, "inductor", "default", "auto", "regional", False)[0]
    else:
        m = accel.apply(base, "inductor", "default", "auto", "regional", False)[0]
        m, cache = cached(comfy, m, max_consecutive=2)
    first = ksample(models, "flux", m, steps=6)
    acc = comfy.package.engine.regional.latest("Flux")
    assert acc.failed is None and len(acc.compiled) == 4
    counters.clear()
    calls = acc.compiled_calls
    again = ksample(models, "flux", m, steps=6)
    assert counters["stats"]["unique_graphs"] == 0 and acc.recompiles == 0
    run = cache.runs[-1]
    assert run["schedule"] == "CSSCSC"
    assert acc.compiled_calls - calls == 4 * run["computed"] + 1 * run["skipped"]
    assert torch.equal(first, again)
    assert (again - eager_cached).abs().max() <= 1e-3 * max(1.0, float(eager_cached.abs().max()))


@pytest.mark.parametrize("compiler", ["deepytorch-whole", "torchcompilemodel"])
def test_a_flux_model_compiled_whole_decides_on_the_whole_model_without_recompiling(comfy, models, compiler):
    """DeepyTorch scope 'whole' or ComfyUI's TorchCompileModel (current ComfyUI: a wrapper that compiles the whole
    diffusion model at sampling time) would trace the block patches into their graph: the cache decides on the
    whole model call instead, leaves its block patches out of the call, and the second run compiles nothing."""
    base = models["flux"][0]
    if compiler == "deepytorch-whole":
        compiled = comfy.package.nodes.diffusion.ApplyDeepyTorchDiffusionModel().apply(
            base, "inductor", "default", "auto", "whole", False)[0]
    else:
        helpers = pytest.importorskip("comfy_api.torch_helpers", reason="TorchCompileModel's wrapper: ComfyUI "
                                      "after v0.3.7")
        compiled = base.clone()
        helpers.set_torch_compile_wrapper(model=compiled, backend="inductor")
    m, cache = cached(comfy, compiled, max_consecutive=2)
    first = ksample(models, "flux", m, steps=6)
    counters.clear()
    again = ksample(models, "flux", m, steps=6)
    assert counters["stats"]["unique_graphs"] == 0
    assert cache.runs[-1]["schedule"] == "CCSSCC" and cache.runs[-1]["kind"] == "whole model"
    assert torch.equal(first, again)


def test_state_lives_for_one_run_and_a_lora_strength_change_is_honoured(comfy, models):
    """One cache (the node before two LoRA loaders of different strengths): after every run no cache tensor is
    left, and the run at the second strength gives exactly what a new cache gives at that strength."""
    import nodes
    base, cache = cached(comfy, models["flux"][0], max_consecutive=2)
    with torch.inference_mode():
        strong, weak, ref = (nodes.LoraLoaderModelOnly().load_lora_model_only(m, NAMES["flux_lora"], s)[0]
                             for m, s in ((base, 1.0), (base, 0.4), (models["flux"][0], 0.4)))
    a = ksample(models, "flux", strong)
    assert cache.tensor_count() == 0 and cache.runs[-1]["skipped"] > 0
    ksample(models, "flux", weak, steps=3)             # another schedule length in between
    b = ksample(models, "flux", weak)
    assert cache.tensor_count() == 0 and len(cache.runs) == 3
    fresh = ksample(models, "flux", cached(comfy, ref, max_consecutive=2)[0])
    assert torch.equal(b, fresh) and (a - b).abs().max() > 1e-3


def test_controlnet_window_edges_are_computed(comfy, models):
    """SDXL + a ControlNet active from 30% to 60% of the schedule: the steps where it starts and stops are computed
    though the decision says skip."""
    import nodes
    _, pos, neg, _ = models["sdxl"]
    with torch.inference_mode():
        cn = nodes.ControlNetLoader().load_controlnet(NAMES["sdxl_controlnet"])[0]
        hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
        cpos, cneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, hint, 1.0, 0.3, 0.6)[:2]
    m, cache = cached(comfy, models["sdxl"][0], max_consecutive=100)
    calls = []

    def outer(apply_model, args):
        calls.append(args["c"].get("control") is not None)
        return inner(apply_model, args)
    inner = m.model_options["model_function_wrapper"]
    m.set_model_unet_function_wrapper(outer)
    ksample(models, "sdxl", m, steps=10, cfg=5.0, pos=cpos, neg=cneg)
    sched = cache.runs[-1]["schedule"]
    edges = [i for i in range(1, len(calls)) if calls[i] != calls[i - 1]]
    assert len(edges) == 2 and all(sched[i] == "C" for i in edges), (calls, sched)
    assert sched.count("S") >= 4


def test_verify_computes_every_step_and_logs_the_real_error(comfy, models, deepy_log):
    plain = ksample(models, "flux")
    m, cache = cached(comfy, models["flux"][0], threshold=FORCE, verify=True)
    assert torch.equal(ksample(models, "flux", m), plain)
    assert cache.runs[-1]["schedule"] == "CSSSSC"      # the decisions, though every step was computed
    lines = [ln for ln in deepy_log.text.splitlines() if "verify: step" in ln]
    assert len(lines) == 4 and "would be skipped: estimate " in lines[0] and ", real error " in lines[0]
    assert all(0 < real < 10 for _, _, real in cache.runs[-1]["verify"])


def test_another_step_cache_on_the_model_is_warned_about(comfy, models, deepy_log):
    ec = pytest.importorskip("comfy_extras.nodes_easycache", reason="ComfyUI's EasyCache came with v0.3.52")
    easy = ec.EasyCacheNode.execute(models["sdxl"][0], 0.2, 0.15, 0.95, False)
    easy = easy[0] if isinstance(easy, tuple) else easy.args[0]
    cached(comfy, easy, threshold=0.1)
    warning = ("DeepyTorch: Apply DeepyTorch step cache: ComfyUI's easycache is also on this model; stacking step "
               "caches compounds their errors (use one)")
    assert deepy_log.text.count(warning) == 1
    deepy_log.clear()     # EasyCache applied after ours: said when sampling starts, once
    ours, _ = cached(comfy, models["sdxl"][0], threshold=0.1)
    assert warning not in deepy_log.text
    after = ec.EasyCacheNode.execute(ours, 0.2, 0.15, 0.95, False)
    ksample(models, "sdxl", after[0] if isinstance(after, tuple) else after.args[0], steps=3)
    ksample(models, "sdxl", after[0] if isinstance(after, tuple) else after.args[0], steps=3)
    assert deepy_log.text.count(warning) == 1


def block_patch(scale=0.5):
    """Another node's "dit" patch of a FLUX block, set as packs set theirs (ModelPatcher.set_model_patch_replace):
    the block's image output scaled; `patch.calls` counts its calls."""
    def patch(args, extra):
        patch.calls += 1
        out = extra["original_block"](args)
        return dict(out, img=out["img"] * scale)
    patch.calls = 0
    return patch


@pytest.mark.parametrize("block,index", [("double_block", 0), ("double_block", 1), ("single_block", 1)])
def test_another_nodes_block_patch_runs_inside_ours_set_before_or_after(comfy, models, block, index):
    """A patch on the first / a middle / the last block, set before our node or after it: threshold 0 gives the
    patched model's latents exactly; with every allowed step skipped it runs where its block runs (the first block:
    every step; the others: computed steps only)."""
    base = models["flux"][0]
    patch = block_patch()
    patched = base.clone()
    patched.set_model_patch_replace(patch, "dit", block, index)
    plain = ksample(models, "flux", patched)
    assert patch.calls == 6 and not torch.equal(plain, ksample(models, "flux"))
    for order in ("before", "after"):
        for threshold, schedule, calls in ((0.0, "CCCCCC", 6), (FORCE, "CSSSSC", 6 if index == 0 and
                                                                 block == "double_block" else 2)):
            if order == "before":
                m, cache = cached(comfy, patched, threshold=threshold)
            else:
                m, cache = cached(comfy, base, threshold=threshold)
                m = m.clone()
                m.set_model_patch_replace(patch, "dit", block, index)
            patch.calls = 0
            out = ksample(models, "flux", m)
            assert (cache.runs[-1]["schedule"], patch.calls) == (schedule, calls), (order, threshold)
            if not threshold:
                assert torch.equal(out, plain), order


def test_another_nodes_block_patch_set_after_ours_runs_inside_ours_on_the_deeptorch_sampler(comfy, parts):
    patch = block_patch()
    patched = parts.model.clone()
    patched.set_model_patch_replace(patch, "dit", "double_block", 1)
    plain = sample_direct(comfy, parts, model=patched, steps=5)
    for threshold, schedule, calls in ((0.0, "CCCCC", 5), (FORCE, "CSSSC", 2)):
        m, cache = cached(comfy, parts.model, threshold=threshold)
        m = m.clone()
        m.set_model_patch_replace(patch, "dit", "double_block", 1)
        patch.calls = 0
        out = sample_direct(comfy, parts, model=m, steps=5)
        assert (cache.runs[-1]["schedule"], patch.calls) == (schedule, calls)
        if not threshold:
            assert torch.equal(out, plain)


def skip_layer_guidance(model):
    """ComfyUI's SkipLayerGuidanceDiT at every step, double block 1 and single block 0 left out of its extra call."""
    slg = pytest.importorskip("comfy_extras.nodes_slg")
    kw = dict(scale=3.0, start_percent=0.0, end_percent=1.0, double_layers="1", single_layers="0")
    node = slg.SkipLayerGuidanceDiT
    out = node.execute(model, **kw) if hasattr(node, "execute") else node().skip_guidance(model, **kw)
    return out[0] if isinstance(out, tuple) else out.args[0]


@pytest.mark.parametrize("order", ["before", "after"])
def test_comfyuis_skip_layer_guidance_call_is_a_branch_of_its_own(comfy, models, order):
    """SkipLayerGuidanceDiT replaces blocks per call, for an extra call of the cond batch: our patches call its
    patches inside, and that call is cached as a branch of its own (not a second step, not the cond branch)."""
    base = models["flux"][0]
    plain = ksample(models, "flux", skip_layer_guidance(base))
    for threshold, schedule in ((0.0, "CCCCCC"), (FORCE, "CSSSSC")):
        if order == "before":
            m, cache = cached(comfy, skip_layer_guidance(base), threshold=threshold)
        else:
            ours, cache = cached(comfy, base, threshold=threshold)
            m = skip_layer_guidance(ours)
        seen = Seen(base, "flux")
        try:
            out = ksample(models, "flux", m)
        finally:
            seen.close()
        sched = cache.runs[-1]["schedule"]
        assert sched == schedule and len(seen.calls) == 12, (order, threshold)
        if not threshold:
            assert torch.equal(out, plain)
            continue
        for i, c in enumerate(seen.calls):
            c["step"] = sched[i // 2]
        # calls alternate: the cond batch, then SkipLayerGuidance's call with blocks left out
        assert _check_flux_formula(seen.calls, sched, branch_of=lambda i: i % 2) == 8
        assert cache.peak_tensors == 2


def test_bad_window_names_the_node_and_inputs(comfy, models):
    node = comfy.package.nodes.step_cache.ApplyDeepyTorchStepCache()
    with pytest.raises(ValueError, match=r"^Apply DeepyTorch step cache: start \(0.8\) is after end \(0.5\)$"):
        node.apply(models["flux"][0], 0.1, 0.8, 0.5, 3, False)


def test_bypassed_node_leaves_the_model_alone(comfy, models):
    base = models["flux"][0]
    before = dict(base.model_options.get("transformer_options") or {})
    m, _ = cached(comfy, base)
    assert "model_function_wrapper" not in base.model_options and (base.model_options.get(
        "transformer_options") or {}) == before
    assert m.model_options["model_function_wrapper"] is not None
    assert np.isfinite(ksample(models, "flux").numpy()).all()
