"""The "DeepTorch Sampler to replace XlabsSampler" node through the real ComfyUI's in-process executor (float32 CPU,
no x-flux-comfyui needed): its interface; the latents against a reference computed here from the formulas with
ComfyUI's own FLUX forward; determinism, true CFG, denoise_strength, image_to_image_strength, XLabs' crash cases,
acceleration (compiled code ran), progress, Cancel, errors; the block-by-block path against forward_orig.
Parity with XLabs' XlabsSampler itself (x-flux-comfyui): test_sampler_xflux_parity.py.
"""
import math
import types

import pytest
import torch

from comfyui.sampler_helpers import GUIDANCE, NODE, graph, i2i_latent, sample_direct, saved_latent, write_i2i_latent
from comfyui.sampler_helpers import parts  # noqa: F401 (a pytest fixture, requested by name)
from devkit.tiny_models import NAMES
from harness import workflows as wf

# XlabsSampler's interface (x-flux-comfyui nodes.py), in order
REQUIRED = [("model", "MODEL", {}), ("conditioning", "CONDITIONING", {}), ("neg_conditioning", "CONDITIONING", {}),
            ("noise_seed", "INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
            ("steps", "INT", {"default": 20, "min": 1, "max": 100}),
            ("timestep_to_start_cfg", "INT", {"default": 20, "min": 0, "max": 100}),
            ("true_gs", "FLOAT", {"default": 3, "min": 0, "max": 100}),
            ("image_to_image_strength", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            ("denoise_strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})]
OPTIONAL = [("latent_image", "LATENT", {"default": None}), ("controlnet_condition", "ControlNetCondition",
                                                             {"default": None})]


@pytest.fixture
def sample(comfy):
    """Run a graph in-process, return our sampler's latent."""
    write_i2i_latent(comfy.input_dir)

    def run(fresh=True, **kw):
        return saved_latent(comfy.output_dir, comfy.run(graph(**kw), fresh=fresh))
    return run


# -- the reference: formulas + ComfyUI's own FLUX forward (float32) --------------------------------------------
def reference(parts, seed=0, steps=4, cfg_start=20, true_gs=3.0, i2i=None, strength=0.0, denoise=1.0, h=8, w=8):
    """The XLabs sampling written out from the formulas, calling ComfyUI's Flux.forward (which packs by itself)."""
    import comfy.model_management as mm
    mm.load_models_gpu([parts.model])
    dm = parts.model.model.diffusion_model
    height, width = h // 2 * 16, w // 2 * 16
    seq = (width // 8) * (height // 8) // 4
    mu = 0.5 + (1.15 - 0.5) * (seq - 256) / (4096 - 256)
    ts = [1.0] + [math.exp(mu) / (math.exp(mu) + (1 / (1 - i / steps) - 1)) for i in range(1, steps)] + [0.0]
    if denoise <= 0.99:
        ts = ts[:int(len(ts) * denoise)]
    x = torch.randn(1, 16, h // 2 * 2, w // 2 * 2, generator=torch.Generator().manual_seed(seed))
    if i2i is not None:
        k = int((1 - strength) * len(ts))
        t = ts[k]
        ts = ts[k:]
        x = t * x + (1 - t) * (i2i - 0.1159) * 0.3611
    pc, pv = parts.pos[0][0], parts.pos[0][1]["pooled_output"]
    nc, nv = parts.neg[0][0], parts.neg[0][1]["pooled_output"]
    g = torch.tensor([GUIDANCE])
    with torch.no_grad():
        for i, (t_curr, t_prev) in enumerate(zip(ts, ts[1:])):
            t = torch.tensor([t_curr])
            v = dm(x, t, pc, pv, g)
            if i >= cfg_start:
                vn = dm(x, t, nc, nv, g)
                v = vn + true_gs * (v - vn)
            x = x + (t_prev - t_curr) * v
    return x / 0.3611 + 0.1159


def close(a, b, rel=1e-4):
    return (a.float() - b.float()).abs().max().item() <= rel * b.float().abs().max().item()


# -- interface -------------------------------------------------------------------------------------------------
def test_interface_is_xlabs_sampler_s(comfy):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[NODE]
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS[NODE] == "DeepTorch Sampler to replace XlabsSampler"
    assert cls.CATEGORY == "DeepyTorch" and cls.RETURN_TYPES == ("LATENT",) and cls.RETURN_NAMES == ("latent",)
    spec = cls.INPUT_TYPES()
    for section, expected in (("required", REQUIRED), ("optional", OPTIONAL)):
        assert list(spec[section]) == [name for name, _, _ in expected]
        for name, typ, opts in expected:
            got = spec[section][name]
            assert got[0] == typ
            assert {k: v for k, v in got[1].items() if k != "tooltip"} == opts, name
            assert got[1]["tooltip"], name


# -- float32 model, no x-flux: against the formulas ------------------------------------------------------------
def test_defaults_match_the_reference_and_are_deterministic_per_seed(comfy, sample, parts, deepy_log):
    out = sample()
    assert out.shape == (1, 16, 8, 8) and out.dtype == torch.float32
    assert close(out, reference(parts)), (out - reference(parts)).abs().max()
    assert torch.equal(sample(), out)                      # same seed, same latent (a fresh run)
    other = sample(seed=1, fresh=False)
    assert (other - out).abs().max() > 1
    assert ("DeepyTorch: DeepTorch Sampler: 4 step(s) at 64x64, batch 1, in float32, calling the model via "
            "forward_orig" in deepy_log.text)


def test_true_cfg_from_step_index(sample, parts):
    plain = sample(fresh=False)
    cfg = sample(cfg_start=1, true_gs=3.5, fresh=False)
    assert close(cfg, reference(parts, cfg_start=1, true_gs=3.5))
    assert (cfg - plain).abs().max() > 1
    # CFG from a step index at or beyond the step count is no CFG
    assert torch.equal(sample(cfg_start=4, true_gs=3.5, fresh=False), plain)


def test_denoise_strength_cuts_the_end_of_the_schedule(sample, parts):
    out = sample(denoise=0.6, fresh=False)
    assert close(out, reference(parts, denoise=0.6))
    plain = sample(fresh=False)
    assert (out - plain).abs().max() > 1
    assert torch.equal(sample(denoise=0.995, fresh=False), plain)    # above 0.99 the full schedule


def test_image_to_image_strength_on_a_16_channel_latent(sample, parts):
    out = sample(latent="i2i", i2i=0.5, fresh=False)
    assert close(out, reference(parts, i2i=i2i_latent(), strength=0.5))
    stronger = sample(latent="i2i", i2i=0.8, fresh=False)
    # more strength: further from the input latent
    src = i2i_latent()
    assert (out - src).abs().mean() < (stronger - src).abs().mean()


def test_where_xlabs_crashes(sample, parts, deepy_log):
    # 16-channel latent with strength 0 (XlabsSampler: input unchanged / IndexError): text-to-image at its size
    t2i = sample(fresh=False)
    assert torch.equal(sample(latent="empty16", fresh=False), t2i)
    assert "the 16-channel latent_image only sets the size" in deepy_log.text
    # no latent (XlabsSampler: TypeError): 1024 x 1024, batch 1
    out = sample(latent=None, steps=1, fresh=False)
    assert out.shape == (1, 16, 128, 128) and torch.isfinite(out).all()
    assert "no latent_image: text-to-image at 1024x1024, batch 1" in deepy_log.text
    # image-to-image with a schedule denoise_strength leaves empty (XlabsSampler: IndexError): the input comes back
    back = sample(latent="i2i", i2i=0.5, denoise=0.1, fresh=False)
    assert torch.allclose(back, i2i_latent(), atol=1e-5)


def test_batch_and_odd_size(sample, parts):
    out = sample(batch=2, width=64, height=72, fresh=False)   # latent 9 x 8: whole 16-px patches (XLabs): 8 x 8
    assert out.shape == (2, 16, 8, 8)
    assert close(out[:1], reference(parts))
    assert (out[1] - out[0]).abs().max() > 1      # one noise draw for the batch


# -- acceleration ----------------------------------------------------------------------------------------------
def test_accelerated_model_runs_compiled_blocks_and_matches_eager(comfy, sample):
    regional = comfy.package.engine.regional
    kw = dict(steps=3, cfg_start=1, true_gs=3.5)
    eager = sample(**kw)
    compiled = sample(accel=wf.accel_inputs("inductor"), fresh=False, **kw)
    acc = regional.latest("Flux")
    assert acc.backend.name == "inductor" and acc.failed is None
    assert sorted(acc.compiled) == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert acc.compiled_calls == (3 + 2) * 4        # 3 positive + 2 negative model calls x 4 blocks, all compiled
    assert close(compiled, eager, rel=1e-3)
    before = acc.compiled_calls
    again = sample(accel=wf.accel_inputs("inductor"), fresh=False, seed=5, **kw)   # the cached accelerated model
    assert regional.latest("Flux") is acc and acc.compiled_calls == before + 5 * 4
    assert close(again, sample(seed=5, fresh=False, **kw), rel=1e-3)


def test_whole_scope_model_is_named_as_not_accelerated_here(comfy, sample, deepy_log):
    # scope 'whole' compiles the diffusion model's forward(); XLabs' sampling calls forward_orig below it
    sample(accel=wf.accel_inputs("inductor", scope="whole"), steps=1)
    acc = comfy.package.engine.regional.latest("Flux")
    assert acc.scope == "whole" and acc.compiled_calls == 0 and not acc.compiled
    assert ("DeepTorch Sampler: this model was compiled by DeepyTorch with scope 'whole' (the diffusion model's "
            "forward), which XLabs' sampling does not call: it runs uncompiled here. Use scope 'regional'."
            ) in deepy_log.text


# -- progress, Cancel, errors ----------------------------------------------------------------------------------
@pytest.fixture
def progress_hook():
    import comfy.utils
    seen = []
    actions = {}

    def hook(value, total, preview, **kw):
        seen.append((value, total))
        if value in actions:
            actions[value]()
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield types.SimpleNamespace(seen=seen, actions=actions)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)


def test_progress_reaches_steps(sample, progress_hook):
    sample(steps=3, seed=12, fresh=False)
    assert progress_hook.seen == [(1, 3), (2, 3), (3, 3)]


def test_cancel_mid_run_raises_comfy_interrupt(comfy, sample, parts, progress_hook):
    import comfy.model_management as mm
    progress_hook.actions[2] = lambda: mm.interrupt_current_processing(True)
    with pytest.raises(RuntimeError) as e:
        sample(steps=4, seed=11, fresh=False)
    assert "execution_interrupted" in str(e.value)
    assert progress_hook.seen == [(1, 4), (2, 4)]    # stopped before step 3
    assert not mm.processing_interrupted()
    # and the direct call raises ComfyUI's interrupt exception itself
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample_direct(comfy, parts)
    finally:
        mm.interrupt_current_processing(False)


def test_non_flux_model_is_refused(comfy):
    p = graph()
    p["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES["sdxl"]}}
    del p["2"]
    p["4"]["inputs"]["clip"] = p["6"]["inputs"]["clip"] = ["1", 1]
    with pytest.raises(RuntimeError) as e:
        comfy.run(p)
    assert str(e.value).startswith("execution failed: ValueError: DeepTorch Sampler needs a FLUX model, got SDXL\n")


def test_batch_mismatch_and_bad_latent_are_refused(comfy, parts):
    def cond(c, b):
        return [[c[0][0].repeat(b, 1, 1), dict(c[0][1], pooled_output=c[0][1]["pooled_output"].repeat(b, 1))]]
    with pytest.raises(ValueError) as e:
        sample_direct(comfy, parts, pos=cond(parts.pos, 2), neg=cond(parts.neg, 3),
                      latent={"samples": torch.zeros(2, 4, 8, 8)})
    assert str(e.value) == "DeepTorch Sampler: batch mismatch between conditioning (2) and neg_conditioning (3)"
    with pytest.raises(ValueError) as e:
        sample_direct(comfy, parts, pos=cond(parts.pos, 2), latent={"samples": torch.zeros(3, 4, 8, 8)})
    assert str(e.value) == "DeepTorch Sampler: conditioning has batch 2 but latent_image has batch 3"
    with pytest.raises(ValueError) as e:
        sample_direct(comfy, parts, latent={"samples": torch.zeros(1, 16, 3, 8, 8)})
    assert str(e.value) == ("DeepTorch Sampler: latent_image must be an image latent of shape (batch, 16 or 4 "
                            "channels, height >= 2, width >= 2), got (1, 16, 3, 8, 8)")
    with pytest.raises(ValueError) as e:
        sample_direct(comfy, parts, pos=[[parts.pos[0][0], {}]])
    assert str(e.value) == ("DeepTorch Sampler: conditioning has no pooled_output (encode it with a FLUX text "
                            "encoder, e.g. DualCLIPLoader type flux)")
    # a ComfyUI ControlNet (Apply ControlNet) on the conditioning: XLabs' sampling cannot apply it, said, not ignored
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    control_net = n["ControlNetLoader"]().load_controlnet(NAMES["flux_controlnet"])[0]
    controlled = n["ControlNetApply"]().apply_controlnet(parts.neg, control_net, torch.zeros(1, 64, 64, 3), 0.8)[0]
    with pytest.raises(ValueError) as e:
        sample_direct(comfy, parts, neg=controlled)
    assert str(e.value) == ("DeepTorch Sampler: neg_conditioning carries a ControlNet from ComfyUI's Apply "
                            "ControlNet, which XLabs' sampling cannot apply (XlabsSampler ignores it): connect "
                            "x-flux-comfyui's 'Apply Flux ControlNet' to controlnet_condition, or sample with KSampler")
    # a batch-1 conditioning broadcasts to the latent's batch, as XLabs' prepare()
    out = sample_direct(comfy, parts, pos=cond(parts.pos, 2), latent={"samples": torch.zeros(2, 4, 8, 8)})
    assert out.shape == (2, 16, 8, 8)


# -- the block-by-block path against forward_orig (in-process, float32) ----------------------------------------
def test_block_path_equals_forward_orig_on_stock_blocks(comfy, parts):
    import comfy.model_management as mm
    fmc = comfy.package.nodes.flux_model_call
    mm.load_models_gpu([parts.model])
    call = fmc.FluxCall(parts.model.model.diffusion_model)
    assert call.path == "forward_orig"
    fs = comfy.package.engine.flux_sampling
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 16, 64, generator=g)
    txt = parts.pos[0][0].expand(2, -1, -1)
    args = (img, fs.image_ids(2, 8, 8, "cpu", torch.float32), txt, fs.text_ids(2, txt.shape[1], "cpu", torch.float32),
            torch.tensor([0.7, 0.3]), parts.pos[0][1]["pooled_output"].expand(2, -1), torch.tensor([3.5, 3.5]))
    with torch.no_grad():
        assert torch.equal(call.blocks(*args), call(*args))
