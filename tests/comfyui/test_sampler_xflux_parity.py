"""Parity of the "DeepTorch Sampler to replace XlabsSampler" node with XLabs' own code (x-flux-comfyui,
scripts/get-xflux; skipped without it): in-process (float32), XLabs' own sampling functions on XLabs' blocks and an
XLabs ControlNet as reference for the block-by-block path; a real server with --fp16-unet and x-flux-comfyui loaded,
our sampler and XlabsSampler in one graph, interfaces and latents compared.
"""
import importlib
import os
import sys
import types

import pytest
import torch

from comfyui.sampler_helpers import NODE, graph, sample_direct, saved_latent, write_i2i_latent
from comfyui.sampler_helpers import parts  # noqa: F401 (a pytest fixture, requested by name)
from devkit.tiny_models import NAMES
from harness import workflows as wf
from harness import xflux as xflux_harness

XFLUX_DIR = xflux_harness.XFLUX_DIR


# -- XLabs' own code as reference for the block-by-block path (in-process, float32) ----------------------------
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
