"""Parity of the "DeepTorch Sampler to replace XlabsSampler" node with XLabs' own code (x-flux-comfyui,
scripts/get-xflux; skipped without it): in-process (float32), XLabs' own sampling functions on XLabs' blocks and an
XLabs ControlNet as reference for the block-by-block path; a real server with --fp16-unet and x-flux-comfyui loaded,
our sampler and XlabsSampler in one graph, interfaces and latents compared; a second one in bfloat16 for XLabs'
IP-adapter (its processors are bfloat16 only).
"""
import math
import os
import types

import pytest
import torch

from comfyui.sampler_helpers import NODE, graph, sample_direct, saved_latent, write_i2i_latent
from comfyui.sampler_helpers import parts  # noqa: F401 (a pytest fixture, requested by name)
from devkit import xflux as devkit_xflux
from devkit.tiny_models import NAMES
from harness import workflows as wf
from harness import xflux as xflux_harness


# -- XLabs' own code as reference for the block-by-block path (in-process, float32) ----------------------------
@pytest.fixture(scope="module")
def xflux():
    """x-flux-comfyui's sampling / utils / ControlNet modules, imported without its __init__."""
    try:
        return types.SimpleNamespace(sampling=devkit_xflux.module("sampling"), utils=devkit_xflux.module("utils"),
                                     controlnet=devkit_xflux.module("xflux.src.flux.controlnet"),
                                     layers=devkit_xflux.module("layers"))
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


RESIDUAL_GAIN = 20


def xlabs_controlnet(xflux, seed=0):
    """x-flux's own ControlNetFlux at the tiny FLUX widths, every weight random (XLabs zero-initialises the residual
    layers, which would make it add nothing)."""
    fp = xflux.controlnet.FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=64, mlp_ratio=4.0,
                                     num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000,
                                     qkv_bias=True, guidance_embed=True)
    torch.manual_seed(seed)
    net = xflux.controlnet.ControlNetFlux(fp)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) / max(1, p.shape[-1]) ** 0.5)
        for p in net.controlnet_blocks.parameters():   # residuals large enough to move the tiny model's latents
            p.mul_(RESIDUAL_GAIN)
    return net


def control_image(seed=3):
    return torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def conditions(net, image, *windows):
    """x-flux's ControlNetCondition: one entry per (strength, start, end)."""
    return [{"img": image, "controlnet_strength": s, "model": net, "start": a, "end": b} for s, a, b in windows]


def containers_of(xflux, condition):
    """XlabsSampler's ControlNetContainers for a condition (its resize, its window)."""
    def make(n):
        return [xflux.utils.ControlNetContainer(
            el["model"], torch.nn.functional.interpolate(el["img"], size=(64, 64), mode="bicubic"),
            el["controlnet_strength"], int(el["start"] * n), int(el["end"] * n)) for el in condition]
    return make


def test_xlabs_controlnet_condition_matches_xlabs_code(comfy, parts, xflux):
    net = xlabs_controlnet(xflux)
    condition = conditions(net, control_image(), (0.7, 0.0, 1.0))
    kw = dict(steps=3, cfg_start=2, true_gs=2.0)
    out = sample_direct(comfy, parts, controlnet_condition=condition, **kw)
    ref = xlabs_reference(xflux, parts.model, parts.pos, parts.neg, containers=containers_of(xflux, condition), **kw)
    assert torch.equal(out, ref)
    plain = sample_direct(comfy, parts, **kw)
    assert (out - plain).abs().max() > 1                # the ControlNet changed the result


@pytest.mark.parametrize("windows,kw", [
    ([(0.7, 0.0, 0.5)], dict(steps=4, cfg_start=1, true_gs=3.0)),      # after the window: the positive branch
    ([(0.7, 0.0, 1.0), (0.5, 0.4, 0.8)], dict(steps=5, cfg_start=2, true_gs=2.5)),   # reuses the latest output
], ids=["window_true_cfg", "chain_second_late"])
def test_xlabs_controlnet_windows_and_chains_match_xlabs_code(comfy, parts, xflux, windows, kw):
    """XLabs' positive branch adds the latest ControlNet output also outside a ControlNet's window (its previous
    step's, or the one before it in the chain computed this step); its negative branch only inside. Same here."""
    net = xlabs_controlnet(xflux)
    condition = conditions(net, control_image(), *windows)
    out = sample_direct(comfy, parts, controlnet_condition=condition, **kw)
    ref = xlabs_reference(xflux, parts.model, parts.pos, parts.neg, containers=containers_of(xflux, condition), **kw)
    assert torch.equal(out, ref)                        # eager float32, the same operations: exact
    skipped = xlabs_reference(xflux, parts.model, parts.pos, parts.neg, **kw)    # (no ControlNet at all)
    assert (out - skipped).abs().max() > 1


def test_step_cache_skips_the_negative_branchs_controlnet_on_skipped_steps(comfy, parts, xflux):
    """With true CFG and an XLabs ControlNet, "Apply DeepyTorch step cache" on a forced skip: the positive call
    decides each step after its first block (its ControlNet always runs); the negative call of a skipped step needs
    no residual, so its ControlNet does not run: 5 positive + 2 negative ControlNet calls for "CSSSC". With threshold
    0 the latents are the uncached ones, bit for bit."""
    net = xlabs_controlnet(xflux)
    condition = conditions(net, control_image(), (0.7, 0.0, 1.0))
    kw = dict(steps=5, cfg_start=0, true_gs=2.0)
    node = comfy.package.nodes.step_cache.ApplyDeepyTorchStepCache()
    calls = []
    hook = net.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        plain = sample_direct(comfy, parts, controlnet_condition=condition, **kw)
        assert len(calls) == 10
        off = node.apply(parts.model, 0.0, 0.15, 0.95, 3, False)[0]
        assert torch.equal(sample_direct(comfy, parts, model=off, controlnet_condition=condition, **kw), plain)
        calls.clear()
        forced = node.apply(parts.model, 1e9, 0.0, 1.0, 100, False)[0]
        out = sample_direct(comfy, parts, model=forced, controlnet_condition=condition, **kw)
    finally:
        hook.remove()
    cache = comfy.package.nodes.step_cache.step_cache_of(forced)
    assert cache.runs[-1]["schedule"] == "CSSSC" and len(calls) == 5 + 2
    assert torch.isfinite(out).all() and not torch.equal(out, plain)


def test_xlabs_controlnet_starting_late_adds_nothing_where_xlabs_raises(comfy, parts, xflux, deepy_log):
    """XlabsSampler fails (UnboundLocalError) when the first step is outside every window; here those steps run
    without a residual, said in the log, and the steps inside the window use the ControlNet."""
    net = xlabs_controlnet(xflux)
    condition = conditions(net, control_image(), (0.7, 0.5, 1.0))
    kw = dict(steps=4, cfg_start=20)
    with pytest.raises(UnboundLocalError):
        xlabs_reference(xflux, parts.model, parts.pos, parts.neg, containers=containers_of(xflux, condition), **kw)
    out = sample_direct(comfy, parts, controlnet_condition=condition, **kw)
    # schedule of 5 timesteps: window int(0.5 * 5) = 2 .. 5, so steps 0 and 1 have no output to use
    assert "2 ControlNet use(s) before any ControlNet output existed" in deepy_log.text
    plain = sample_direct(comfy, parts, **kw)
    full = sample_direct(comfy, parts, controlnet_condition=conditions(net, control_image(), (0.7, 0.0, 1.0)), **kw)
    assert (out - plain).abs().max() > 1 and (out - full).abs().max() > 1


def test_xlabs_controlnet_compiled_with_the_accelerated_model_and_left_as_it_was(comfy, parts, xflux, deepy_log):
    """With the model from "Apply DeepyTorch to diffusion model", the ControlNet's double blocks run compiled (its
    AcceleratedModel counts graph calls), installed for the sampling call only; the hint network runs once per control
    image across runs; the user's module keeps its own tensors (bfloat16 here, sampled in float32) and forwards; a
    strength change compiles nothing. Latents: XLabs' code on the same ControlNet within 1e-4 (compiled vs eager)."""
    from harness.counting import compiled_since
    from torch._dynamo.utils import counters
    # compile options of its own (dynamic 'false'): the block-by-block call of the tiny FLUX makes a variant of its
    # blocks, kept apart (in-process compiled functions and precompiled artifacts are keyed by the options) from
    # what the warm-start tests count per model
    engine = comfy.package.engine
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    net = xlabs_controlnet(xflux).to(torch.bfloat16)
    tensors = {name: (t.data_ptr(), t.dtype) for name, t in net.state_dict(keep_vars=True).items()}
    image = control_image()
    kw = dict(steps=3, cfg_start=1, true_gs=2.0)
    with torch.inference_mode():
        model = n["DeepyTorchApplyDiffusionModel"]().apply(parts.model, **wf.accel_inputs("inductor",
                                                                                         dynamic="false"))[0]
    out = sample_direct(comfy, parts, model=model, controlnet_condition=conditions(net, image, (0.7, 0.0, 1.0)), **kw)
    acc = engine.regional.latest("XLabs ControlNet ControlNetFlux")
    assert acc is not None and len(acc.compiled) == 2
    calls = 2 * (3 + 2)                                  # 2 blocks x (3 positive + 2 negative ControlNet calls)
    assert acc.compiled_calls == calls and acc.skipped_calls == 0
    model_calls = engine.regional.latest("Flux").compiled_calls
    assert "1 XLabs ControlNet condition(s), compiled with the model's backend 'inductor'" in deepy_log.text
    # the user's ControlNet: its own tensors, dtype and forwards
    assert {name: (t.data_ptr(), t.dtype) for name, t in net.state_dict(keep_vars=True).items()} == tensors
    assert not [name for name, m in net.named_modules() if "forward" in m.__dict__]
    hint = engine_state(comfy, net).hint
    assert (hint.computed, hint.reused) == (1, 4)
    # XLabs' code (it casts the ControlNet in place: a copy) on the eager model
    ref_net = xlabs_controlnet(xflux).to(torch.bfloat16)
    ref_net.load_state_dict(net.state_dict())
    ref = xlabs_reference(xflux, parts.model, parts.pos, parts.neg,
                          containers=containers_of(xflux, conditions(ref_net, image, (0.7, 0.0, 1.0))), **kw)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    # a new strength, the same image: nothing compiles, the hint is reused, the result follows the strength
    counters.clear()
    before = dict(engine.precompiled.STATS)
    stronger = sample_direct(comfy, parts, model=model, controlnet_condition=conditions(net, image, (3.0, 0.0, 1.0)),
                             **kw)
    assert compiled_since(engine, before) == 0
    assert acc.compiled_calls == 2 * calls and hint.computed == 1
    eager = sample_direct(comfy, parts, controlnet_condition=conditions(net, image, (3.0, 0.0, 1.0)), **kw)
    assert acc.compiled_calls == 2 * calls              # the eager model's run: the ControlNet ran eager too
    scale = eager.abs().max().item()
    assert (stronger - eager).abs().max().item() <= 1e-4 * scale
    assert not torch.equal(stronger, out)               # the new strength is in effect
    flux = engine.regional.latest("Flux")
    assert flux.compiled_calls == 2 * model_calls and model_calls == 4 * (3 + 2) and flux.skipped_calls == 0


def engine_state(comfy, net):
    return comfy.package.nodes.xlabs_controlnet.state(net)


# -- parity with XlabsSampler itself: real server, --fp16-unet, x-flux-comfyui loaded --------------------------
def write_control_image(path):
    from PIL import Image
    pixels = (torch.rand(48, 48, 3, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


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
        write_control_image(os.path.join(s.base_dir, "input", CONTROL_IMAGE))
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


CONTROL_IMAGE = "deepytorch_control.png"


def xlabs_controlnet_graph(prefix, samplers, cfg_start=1, true_gs=3.0, strength=0.8, start=0.0, end=1.0, **kw):
    """x-flux's Load Flux ControlNet (the guide's canny ControlNet file) + Apply Advanced Flux ControlNet on a
    control image, into every sampler of the graph."""
    p = graph(samplers=samplers, prefix=prefix, cfg_start=cfg_start, true_gs=true_gs, **kw)
    p["40"] = {"class_type": "LoadFluxControlNet", "inputs": {"model_name": "flux-dev",
                                                               "controlnet_path": NAMES["flux_controlnet"]}}
    p["41"] = {"class_type": "LoadImage", "inputs": {"image": CONTROL_IMAGE}}
    p["42"] = {"class_type": "ApplyAdvancedFluxControlNet", "inputs": {
        "controlnet": ["40", 0], "image": ["41", 0], "strength": strength, "start": start, "end": end}}
    for i in range(len(samplers)):
        p[str(9 + 10 * i)]["inputs"]["controlnet_condition"] = ["42", 0]
    return p


@pytest.mark.parametrize("case", [
    dict(),                                                   # the whole schedule, true CFG from step 1
    dict(end=0.5, strength=1.3),                              # after the window XLabs reuses the last residual
    dict(cfg_start=20, seed=3),                               # no true CFG
], ids=["full", "window_end_0.5", "no_cfg"])
def test_parity_with_xlabs_sampler_with_an_xlabs_controlnet(xlabs_server, case):
    entry = xlabs_server.run(xlabs_controlnet_graph("cn_parity", ("XlabsSampler", NODE), **case))
    theirs, ours = (saved_latent(xlabs_server.output_dir, entry, n) for n in ("90", "190"))
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff}"


def test_xlabs_controlnet_accelerated_matches_xlabs_sampler(xlabs_server):
    """With "Apply DeepyTorch to diffusion model" the XLabs ControlNet's blocks run compiled too (2 regions, logged),
    within the float16 tolerance of the stacked-LoRA test below; without the ControlNet the result differs."""
    p = xlabs_controlnet_graph("cn_accel", ("XlabsSampler", NODE, NODE), end=0.75)
    p["32"] = {"class_type": "DeepyTorchApplyDiffusionModel", "inputs": {"model": ["1", 0],
                                                                         **wf.accel_inputs(attention="comfy")}}
    p["19"]["inputs"]["model"] = ["32", 0]                   # ours, accelerated
    del p["29"]["inputs"]["controlnet_condition"]            # ours, eager, no ControlNet
    entry = xlabs_server.run(p)
    theirs, ours, plain = (saved_latent(xlabs_server.output_dir, entry, n) for n in ("90", "190", "290"))
    scale = theirs.float().abs().max().item()
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= 5e-3 * scale, f"max abs diff {diff} at a latent scale of {scale}"
    assert (ours.float() - plain.float()).abs().max().item() > 0.05 * scale   # the ControlNet is in effect
    log = xlabs_server.log()
    assert "DeepyTorch: XLabs ControlNet ControlNetFlux: compiling 2 region(s) with backend 'inductor'" in log
    assert "1 XLabs ControlNet condition(s), compiled with the model's backend 'inductor'" in log


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


def test_xlabs_lora_and_comfyui_lora_stacked_accelerated_match_xlabs_sampler(xlabs_server):
    """An XLabs LoRA ("Load Flux LoRA") and a ComfyUI LoRA (LoraLoaderModelOnly) stacked, then "Apply DeepyTorch to
    diffusion model", through our sampler (XLabs' blocks do not run in ComfyUI's samplers on ComfyUI >= v0.3.8):
    the latent of XlabsSampler on the same stack, eager, within the float16 tolerance below; the ComfyUI LoRA is in
    effect (runs after test_parity_with_xlabs_sampler_on_an_xlabs_lora, on the model it changed for good)."""
    p = graph(samplers=("XlabsSampler", NODE, NODE, NODE), prefix="stack_lora", cfg_start=1, true_gs=3.5)
    p["30"] = {"class_type": "FluxLoraLoader", "inputs": {"model": ["1", 0], "lora_name": NAMES["xlabs_lora"],
                                                          "strength_model": 0.8}}
    p["31"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["30", 0], "lora_name": NAMES["flux_lora"],
                                                               "strength_model": 1.0}}
    p["32"] = {"class_type": "DeepyTorchApplyDiffusionModel", "inputs": {"model": ["31", 0],
                                                                         **wf.accel_inputs(attention="comfy")}}
    p["9"]["inputs"]["model"] = ["31", 0]       # XlabsSampler, eager, both LoRAs
    p["19"]["inputs"]["model"] = ["32", 0]      # ours, accelerated, both LoRAs
    p["29"]["inputs"]["model"] = ["30", 0]      # ours, the XLabs LoRA only
    p["39"]["inputs"]["model"] = ["31", 0]      # ours, eager, both LoRAs
    entry = xlabs_server.run(p)
    theirs, ours, xlabs_only, eager = (saved_latent(xlabs_server.output_dir, entry, n)
                                       for n in ("90", "190", "290", "390"))
    assert (eager.float() - theirs.float()).abs().max().item() <= 1e-4     # our sampler, eager: XlabsSampler's
    scale = theirs.float().abs().max().item()
    diff = (ours.float() - theirs.float()).abs().max().item()
    # float16 compute (CPU): compiled kernels round apart from eager ones by a few float16 steps (5e-3 = 5 ulps)
    assert diff <= 5e-3 * scale, f"max abs diff {diff} at a latent scale of {scale}"
    assert (ours - xlabs_only).abs().max() > 0.05 * scale   # the ComfyUI LoRA is in effect
    assert "DeepyTorch: Flux: compiling 4 region(s) with backend 'inductor'" in xlabs_server.log()


# -- XLabs' IP-adapter: real loaders (x-flux's "Load Flux IPAdatpter" + ComfyUI's CLIP vision file through
# transformers, as x-flux loads it), a real server computing in bfloat16 ------------------------------------------
REFERENCE_IMAGE_B = "deepytorch_reference_b.png"


@pytest.fixture(scope="module")
def xlabs_bf16_server(comfy, tmp_path_factory):
    """XLabs' IP-adapter processors are cast to bfloat16, so XlabsSampler runs with them only where it computes in
    bfloat16 (`torch.cuda.is_bf16_supported()`): on the CPU it fails in float16. This server answers that question as
    a bfloat16 GPU would (the test pack's stand-in, harness/testpack/bf16_device.py) and loads FLUX in bfloat16."""
    if not xflux_harness.available():
        pytest.skip(f"{xflux_harness.MISSING}: XLabs IP-adapter parity not checked")
    s = xflux_harness.start_server(comfy, str(tmp_path_factory.mktemp("xlabs_bf16")), extra_args=["--bf16-unet"],
                                   env={"DEEPYTORCH_TEST_BF16_DEVICE": "1"})
    try:
        problem = xflux_harness.load_problem(s)
        if problem:
            pytest.skip(problem)
        write_control_image(os.path.join(s.base_dir, "input", CONTROL_IMAGE))
        from PIL import Image
        pixels = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(8)) * 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(os.path.join(s.base_dir, "input", REFERENCE_IMAGE_B))
        yield s
    finally:
        s.stop()


def ip_adapter_graph(prefix, samplers, ip_scale=0.9, image=CONTROL_IMAGE, **kw):
    """x-flux's Load Flux IPAdatpter (with the guide's clip_vision_l) + Apply Flux IPAdapter on a reference image,
    the model of every sampler of the graph."""
    p = graph(samplers=samplers, prefix=prefix, **kw)
    p["50"] = {"class_type": "LoadFluxIPAdapter", "inputs": {"ipadatper": NAMES["xlabs_ip_adapter"],
                                                             "clip_vision": NAMES["clip_vision"], "provider": "CPU"}}
    p["51"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    p["52"] = {"class_type": "ApplyFluxIPAdapter", "inputs": {"model": ["1", 0], "ip_adapter_flux": ["50", 0],
                                                              "image": ["51", 0], "ip_scale": ip_scale}}
    for i in range(len(samplers)):
        p[str(9 + 10 * i)]["inputs"]["model"] = ["52", 0]
    return p


def bf16_ulps(diff, scale):
    """`diff` in bfloat16 steps (8 significant bits) at the magnitude of `scale`."""
    return diff / 2.0 ** (math.floor(math.log2(scale)) - 7)


@pytest.mark.parametrize("case", [dict(), dict(cfg_start=1, true_gs=3.0)], ids=["no_cfg", "true_cfg"])
def test_parity_with_xlabs_sampler_with_an_xlabs_ip_adapter(xlabs_bf16_server, case):
    """Eager: our sampler on the IP-adapter's model gives XlabsSampler's latent (true CFG: XLabs swaps in the
    negative image embedding for the negative branch, and so do we); the IP-adapter is in effect."""
    s = xlabs_bf16_server
    p = ip_adapter_graph("ipa_parity", ("XlabsSampler", NODE, NODE), **case)
    p["29"]["inputs"]["model"] = ["1", 0]                    # ours, without the IP-adapter
    entry = s.run(p)
    theirs, ours, plain = (saved_latent(s.output_dir, entry, n) for n in ("90", "190", "290"))
    assert theirs.dtype == torch.bfloat16                     # XlabsSampler computed in bfloat16
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff}"
    assert (ours.float() - plain.float()).abs().max().item() > 0.05 * theirs.float().abs().max().item()
    assert "in bfloat16, calling the model via blocks" in s.log()


def test_xlabs_ip_adapter_accelerated_matches_xlabs_sampler_and_a_new_strength_or_image_compiles_nothing(
        xlabs_bf16_server):
    """"Apply DeepyTorch to diffusion model" after "Apply Flux IPAdapter" (the guide's insertion point), true CFG:
    the blocks run compiled (every call counted by the status route), the latent is XlabsSampler's (eager, same
    graph) within 5 bfloat16 steps; a new IP-adapter strength, then a new reference image (x-flux installs new
    processor objects each time) compile nothing (the test pack's compile counts) and change the result."""
    import requests
    from harness.counting import compiles_between
    s = xlabs_bf16_server

    def counts():
        return requests.get(s.url + "/deepytorch-testpack/compiles", timeout=30).json()

    def flux_status():
        models = requests.get(s.url + "/deepytorch/status", timeout=30).json()["models"]
        return [m for m in models if m["label"] == "Flux"][-1]

    results = []
    for run, (ip_scale, image) in enumerate([(0.9, CONTROL_IMAGE), (0.4, CONTROL_IMAGE), (0.4, REFERENCE_IMAGE_B)]):
        p = ip_adapter_graph(f"ipa_accel{run}", ("XlabsSampler", NODE), ip_scale=ip_scale, image=image,
                             cfg_start=1, true_gs=3.0)
        p["32"] = {"class_type": "DeepyTorchApplyDiffusionModel", "inputs": {"model": ["52", 0],
                                                                             **wf.accel_inputs(attention="comfy")}}
        p["19"]["inputs"]["model"] = ["32", 0]
        before, log_at = counts(), len(s.log())
        entry = s.run(p)
        theirs, ours = (saved_latent(s.output_dir, entry, n) for n in ("90", "190"))
        scale = theirs.float().abs().max().item()
        diff = (ours.float() - theirs.float()).abs().max().item()
        # bfloat16 compute: compiled kernels round apart from eager ones by a few bfloat16 steps (measured: 2)
        assert bf16_ulps(diff, scale) <= 5, f"run {run}: max abs diff {diff} at a latent scale of {scale}"
        model = flux_status()
        # 4 regions x (4 positive + 3 negative calls), compiled; no recompile
        assert (model["compiled"], model["compiled_calls"], model["recompiles"]) == (4, 28, 0), model
        new_log = s.log()[log_at:]
        assert "IP-adapter strengths passed to the compiled blocks as tensors" in new_log
        if run == 0:
            assert "DeepyTorch: Flux: compiling 4 region(s) with backend 'inductor'" in new_log
        else:
            assert compiles_between(before, counts()) == 0, (before, counts())
            assert "all 4 region(s) ready in" in new_log and "recompiled" not in new_log, new_log[-3000:]
        results.append((theirs.float(), ours.float(), scale))
    for (theirs_a, ours_a, scale), (theirs_b, ours_b, _) in zip(results, results[1:]):
        assert (theirs_a - theirs_b).abs().max().item() > 0.02 * scale     # the new strength / image is in effect
        assert (ours_a - ours_b).abs().max().item() > 0.02 * scale


def test_ip_scales_are_tensors_for_the_call_and_floats_again_after(comfy, xflux):
    """x-flux's own IPProcessor objects (as "Apply Flux IPAdapter" installs them): their float strengths become 0-d
    tensors inside the context and are the same floats after it, also when the call fails."""
    ip_scales_as_tensors = comfy.package.nodes.flux_model_call.ip_scales_as_tensors
    procs = [xflux.layers.IPProcessor(8, 16, None, scale) for scale in (0.9, 0.25)]
    mixer = xflux.layers.DoubleStreamMixerProcessor()
    for ip in procs:
        mixer.add_ipadapter(ip)
    dm = types.SimpleNamespace(double_blocks=[types.SimpleNamespace(processor=mixer), types.SimpleNamespace()])
    with pytest.raises(KeyboardInterrupt):
        with ip_scales_as_tensors(dm) as n:
            assert n == 2
            assert [ip.ip_scale.item() for ip in procs] == [pytest.approx(0.9), 0.25]
            assert all(ip.ip_scale.dtype == torch.float32 and ip.ip_scale.dim() == 0 for ip in procs)
            raise KeyboardInterrupt
    assert [ip.ip_scale for ip in procs] == [0.9, 0.25] and all(type(ip.ip_scale) is float for ip in procs)
