"""#11 "DeepTorch Sampler to replace XlabsSampler" through the real ComfyUI (in-process executor and real server).

- in-process (float32 CPU, no x-flux needed): the latents against a reference computed here from the formulas
  with ComfyUI's own FLUX forward; determinism, true CFG, denoise_strength, image_to_image_strength, XLabs' crash
  cases, acceleration (compiled code ran), progress, Cancel, errors.
- with x-flux-comfyui (scripts/get-xflux): a real server with --fp16-unet and x-flux-comfyui loaded, our sampler and
  XlabsSampler in one graph, latents compared; in-process, XLabs' own sampling functions on XLabs' blocks and an
  XLabs ControlNet as reference for the block-by-block path.
"""
import importlib
import math
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import workflows as wf
from harness import xflux as xflux_harness
from harness.tiny_models import NAMES

NODE = "DeepTorchXlabsSampler"
XFLUX_DIR = xflux_harness.XFLUX_DIR
I2I_LATENT = "deepytorch_sampler_i2i.latent"
GUIDANCE = 3.5

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


# -- graphs ----------------------------------------------------------------------------------------------------
def sampler_inputs(seed=0, steps=4, cfg_start=20, true_gs=3.0, i2i=0.0, denoise=1.0):
    return {"noise_seed": seed, "steps": steps, "timestep_to_start_cfg": cfg_start, "true_gs": true_gs,
            "image_to_image_strength": i2i, "denoise_strength": denoise}


def graph(samplers=(NODE,), latent="empty4", width=64, height=64, batch=1, accel=None, prefix="xs", **kw):
    """UNETLoader + FLUX text encoders + FluxGuidance + a latent + sampler(s) -> SaveLatent (node '<sampler id>0').
    latent: 'empty4' (EmptyLatentImage, as XLabs' workflows), 'empty16' (EmptySD3LatentImage), 'i2i' (LoadLatent of
    I2I_LATENT), None (not connected)."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAMES["flux_unet"], "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": NAMES["clip_l"], "clip_name2": NAMES["t5"],
                                                         "type": "flux"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny red fox", "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": GUIDANCE}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 0]}},
    }
    if latent == "empty4":
        p["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    elif latent == "empty16":
        p["7"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height,
                                                                  "batch_size": batch}}
    elif latent == "i2i":
        p["7"] = {"class_type": "LoadLatent", "inputs": {"latent": I2I_LATENT}}
    model = ["1", 0]
    if accel is not None:
        p["21"] = {"class_type": wf.ACCEL_NODE, "inputs": {"model": model, **accel}}
        model = ["21", 0]
    for i, cls in enumerate(samplers):
        nid = str(9 + 10 * i)
        inputs = {"model": model, "conditioning": ["5", 0], "neg_conditioning": ["6", 0], **sampler_inputs(**kw)}
        if latent is not None:
            inputs["latent_image"] = ["7", 0]
        p[nid] = {"class_type": cls, "inputs": inputs}
        p[nid + "0"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0],
                                                               "filename_prefix": f"{prefix}_{cls}"}}
    return p


def saved_latent(output_dir, entry, node="90"):
    f = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(output_dir, f["subfolder"], f["filename"]))["latent_tensor"]


def i2i_latent():
    """A fixed 16-channel latent (seeded), in ComfyUI's latent space."""
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(42)) * 0.5


def write_i2i_latent(input_dir):
    save_file({"latent_tensor": i2i_latent(), "latent_format_version_0": torch.tensor([])},
              os.path.join(input_dir, I2I_LATENT))


@pytest.fixture
def sample(comfy):
    """Run a graph in-process, return our sampler's latent."""
    write_i2i_latent(comfy.input_dir)

    def run(fresh=True, **kw):
        return saved_latent(comfy.output_dir, comfy.run(graph(**kw), fresh=fresh))
    return run


# -- the reference: formulas + ComfyUI's own FLUX forward (float32) --------------------------------------------
@pytest.fixture(scope="module")
def parts(comfy):
    """The tiny FLUX model and the two conditionings, loaded with ComfyUI's own node classes."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    model = n["UNETLoader"]().load_unet(NAMES["flux_unet"], "default")[0]
    clip = n["DualCLIPLoader"]().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
    enc = n["CLIPTextEncode"]()
    pos = enc.encode(clip, "a tiny red fox")[0]
    neg = enc.encode(clip, "blurry")[0]
    pos = [[pos[0][0], dict(pos[0][1], guidance=GUIDANCE)]]   # what FluxGuidance does
    return types.SimpleNamespace(model=model, pos=pos, neg=neg)


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


def sample_direct(comfy, parts, model=None, pos=None, neg=None, latent=None, controlnet_condition=None, **kw):
    """Our node called directly (for inputs no stock node makes: batched conditionings, 5-D latents, XLabs blocks)."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    model = parts.model if model is None else model
    pos = parts.pos if pos is None else pos
    neg = parts.neg if neg is None else neg
    latent = {"samples": torch.zeros(1, 4, 8, 8)} if latent is None else latent
    return n[NODE]().sampling(model, pos, neg, latent_image=latent, controlnet_condition=controlnet_condition,
                              **sampler_inputs(**kw))[0]["samples"]


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
    # a batch-1 conditioning broadcasts to the latent's batch, as XLabs' prepare()
    out = sample_direct(comfy, parts, pos=cond(parts.pos, 2), latent={"samples": torch.zeros(2, 4, 8, 8)})
    assert out.shape == (2, 16, 8, 8)


# -- the block-by-block path: XLabs' own code as reference (in-process, float32) -------------------------------
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


@pytest.fixture(scope="module")
def xflux():
    """x-flux-comfyui's sampling / utils modules, imported without its __init__ (which registers nodes and makes
    model folders)."""
    if not os.path.isfile(os.path.join(XFLUX_DIR, "sampling.py")):
        pytest.skip(f"x-flux-comfyui not found in {XFLUX_DIR} (scripts/get-xflux)")
    name = "deepytorch_tests_xflux"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [XFLUX_DIR]
        sys.modules[name] = pkg
    try:
        return types.SimpleNamespace(sampling=importlib.import_module(name + ".sampling"),
                                     utils=importlib.import_module(name + ".utils"),
                                     controlnet=importlib.import_module(name + ".xflux.src.flux.controlnet"))
    except ImportError as e:
        pytest.skip(f"x-flux-comfyui cannot be imported: {e}")


def xlabs_reference(xflux, model, pos, neg, seed=0, steps=4, cfg_start=20, true_gs=3.0, containers=None):
    """XlabsSampler.sampling's computation with XLabs' own functions (4-channel 64x64 latent, float32)."""
    import comfy.model_management as mm
    s = xflux.sampling
    mm.load_models_gpu([model])
    x = s.get_noise(1, 64, 64, device="cpu", dtype=torch.float32, seed=seed)
    timesteps = s.get_schedule(steps, (64 // 8) * (64 // 8) // 4, shift=True)
    inp = s.prepare(pos[0][0], pos[0][1]["pooled_output"], img=x)
    neg_inp = s.prepare(neg[0][0], neg[0][1]["pooled_output"], img=x)
    kw = dict(timesteps=timesteps, guidance=pos[0][1].get("guidance", 1.0), timestep_to_start_cfg=cfg_start,
              neg_txt=neg_inp["txt"], neg_txt_ids=neg_inp["txt_ids"], neg_vec=neg_inp["vec"], true_gs=true_gs,
              image2image_strength=0.0, orig_image=None, callback=None, width=64, height=64)
    with torch.no_grad():
        if containers is None:
            x = s.denoise(model.model.diffusion_model, **inp, **kw)
        else:
            x = s.denoise_controlnet(model.model.diffusion_model, containers(len(timesteps)), **inp, **kw)
    return s.unpack(x, 64, 64) / 0.3611 + 0.1159


def test_xlabs_blocks_use_the_block_path_and_match_xlabs_code(comfy, parts, xflux, deepy_log):
    """XLabs' LoRA / IP-adapter loaders swap the double blocks for XLabs' own (no attn_mask, a processor):
    ComfyUI's KSampler fails with them on ComfyUI >= v0.3.8; this sampler calls them with what they accept."""
    model = parts.model.clone()
    for i, block in enumerate(model.model.diffusion_model.double_blocks):
        model.add_object_patch(f"diffusion_model.double_blocks.{i}", xflux.utils.CopyDSB(block))
    kw = dict(steps=3, cfg_start=1, true_gs=3.5)
    out = sample_direct(comfy, parts, model, **kw)
    assert "calling the model via blocks" in deepy_log.text
    ref = xlabs_reference(xflux, model, parts.pos, parts.neg, **kw)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    # and the stock model through forward_orig: XLabs' code on it gives the same
    stock = sample_direct(comfy, parts, **kw)
    assert torch.equal(stock, xlabs_reference(xflux, parts.model, parts.pos, parts.neg, **kw))


def test_xlabs_controlnet_condition_matches_xlabs_code(comfy, parts, xflux):
    fp = xflux.controlnet.FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=64, mlp_ratio=4.0,
                                     num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000,
                                     qkv_bias=True, guidance_embed=True)
    torch.manual_seed(0)
    net = xflux.controlnet.ControlNetFlux(fp)
    with torch.no_grad():
        for p in net.parameters():     # XLabs zero-initialises the residual layers: give them weights
            p.copy_(torch.randn(p.shape) / max(1, p.shape[-1]) ** 0.5)
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    condition = [{"img": image, "controlnet_strength": 0.7, "model": net, "start": 0.0, "end": 1.0}]
    kw = dict(steps=3, cfg_start=2, true_gs=2.0)
    out = sample_direct(comfy, parts, controlnet_condition=condition, **kw)

    def containers(n):
        img = torch.nn.functional.interpolate(image, size=(64, 64), mode="bicubic")
        return [xflux.utils.ControlNetContainer(net, img, 0.7, int(0.0 * n), int(1.0 * n))]
    ref = xlabs_reference(xflux, parts.model, parts.pos, parts.neg, containers=containers, **kw)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    plain = sample_direct(comfy, parts, **kw)
    assert (out - plain).abs().max() > 1                # the ControlNet changed the result


# -- parity with XlabsSampler itself: real server, --fp16-unet, x-flux-comfyui loaded --------------------------
@pytest.fixture(scope="module")
def xlabs_server(comfy, tmp_path_factory):
    xflux = xflux_harness
    if not xflux.available():
        reason = f"{xflux.MISSING}: XlabsSampler parity not checked"
        print(reason)
        pytest.skip(reason)
    s = xflux.start_server(comfy, str(tmp_path_factory.mktemp("xlabs")), extra_args=["--fp16-unet"])
    try:
        problem = xflux.load_problem(s)
        if problem:
            print(problem)
            pytest.skip(problem)
        write_i2i_latent(os.path.join(s.base_dir, "input"))
        s.info = s.object_info()
        yield s
    finally:
        s.stop()


def test_object_info_interface_equals_xlabs_sampler(xlabs_server):
    ours, theirs = xlabs_server.info[NODE], xlabs_server.info["XlabsSampler"]
    assert ours["display_name"] == "DeepTorch Sampler to replace XlabsSampler" and ours["category"] == "DeepyTorch"
    assert ours["output"] == theirs["output"] == ["LATENT"] and ours["output_name"] == theirs["output_name"]
    for section in ("required", "optional"):
        assert list(ours["input"][section]) == list(theirs["input"][section])
        for name, spec in theirs["input"][section].items():
            mine = ours["input"][section][name]
            assert mine[0] == spec[0], name
            assert {k: v for k, v in (mine[1] if len(mine) > 1 else {}).items() if k != "tooltip"} == \
                (spec[1] if len(spec) > 1 else {}), name


@pytest.mark.parametrize("case", [
    dict(),                                                   # defaults, 4 steps
    dict(cfg_start=1, true_gs=3.5),                           # true CFG from step index 1
    dict(denoise=0.6),
    dict(latent="i2i", i2i=0.5),                              # 16-channel latent
    dict(seed=7, width=64, height=96),                        # second seed, non-square
], ids=["defaults", "true_cfg", "denoise_0.6", "img2img_0.5", "seed7_64x96"])
def test_parity_with_xlabs_sampler(xlabs_server, case):
    entry = xlabs_server.run(graph(samplers=("XlabsSampler", NODE), prefix="parity", **case))
    theirs = saved_latent(xlabs_server.output_dir, entry, "90")
    ours = saved_latent(xlabs_server.output_dir, entry, "190")
    assert theirs.dtype == torch.float16                      # XlabsSampler computed in float16 (CPU)
    assert ours.shape == theirs.shape
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff}"
    assert "DeepTorch Sampler: " in xlabs_server.log() and "in float16" in xlabs_server.log()


def test_parity_with_xlabs_sampler_on_an_xlabs_lora(xlabs_server):
    """XLabs' "Load Flux LoRA" swaps the double blocks for XLabs' own with LoRA processors (in the shared model, for
    good: so this runs last). Our sampler calls them block by block and still matches XlabsSampler."""
    p = graph(samplers=("XlabsSampler", NODE, NODE), prefix="parity_lora", cfg_start=1, true_gs=3.5)
    p["30"] = {"class_type": "FluxLoraLoader", "inputs": {"model": ["1", 0], "lora_name": NAMES["xlabs_lora"],
                                                          "strength_model": 0.8}}
    p["9"]["inputs"]["model"] = p["19"]["inputs"]["model"] = ["30", 0]    # "29": the same model without the LoRA
    entry = xlabs_server.run(p)
    theirs, ours, plain = (saved_latent(xlabs_server.output_dir, entry, n) for n in ("90", "190", "290"))
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff}"
    assert (ours - plain).abs().max() > 1                    # the LoRA is in effect
    assert "in float16, calling the model via blocks" in xlabs_server.log()
