"""Tiny real-format models built with ComfyUI's own module classes, saved under the file names of the seed's
workflows (models/unet/flux1-dev.safetensors, ...).

Must run inside a booted ComfyUI process (devkit.comfy_boot) with the test pack's width shim.
Key names are exactly those of the real checkpoints (flux1-dev.safetensors, ae.safetensors,
clip_l.safetensors, t5xxl_*.safetensors, an SDXL checkpoint with UNet + CLIP-L + OpenCLIP-G + VAE);
only the widths/depths are tiny.
"""
import json
import os

import torch
from safetensors.torch import save_file

from devkit.models import fill, flux_lora, meta_state_dict, sdxl_lora

# Tiny dimensions (shared convention with tiny_shim.py)
FLUX = dict(in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64, mlp_ratio=4.0,
            num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
            qkv_bias=True, guidance_embed=True)
CLIP_L = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2)
T5 = dict(d_model=32, num_layers=1, num_heads=4, d_kv=8, d_ff=64)
VAE = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
           num_res_blocks=1, attn_resolutions=[], dropout=0.0)
# SDXL-shaped UNet: 3 levels, cross-attention only on the lower two, ADM input = pooled CLIP-G + 6 x 256 size embeds.
# Head width stays 64 (ComfyUI fixes num_head_channels=64 for SD UNets), so channels are multiples of 64.
CLIP_G = dict(hidden_size=32, num_hidden_layers=3, intermediate_size=64, num_attention_heads=2, projection_dim=32)
# (ComfyUI's CLIPTextModel projection is square: pooled width = hidden width)
SDXL_UNET = dict(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 2],
                 transformer_depth=[0, 1, 1], transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1, 1, 1],
                 context_dim=CLIP_L["hidden_size"] + CLIP_G["hidden_size"], num_head_channels=64, num_heads=-1,
                 use_linear_in_transformer=True, adm_in_channels=CLIP_G["projection_dim"] + 6 * 256,
                 num_classes="sequential", image_size=32, use_spatial_transformer=True, legacy=False,
                 use_temporal_resblock=False,
                 use_temporal_attention=False)
SD_VAE = dict(VAE, z_channels=4)
# CLIP vision ViT-L/14 (clip_vision_l): ComfyUI picks its config by the 24th layer, so the depth stays; the 224-px
# input (XLabs' IP-adapter preprocesses to it) and the 14-px patches stay too
CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, projection_dim=16)


def make_flux(dtype=torch.bfloat16, seed=1, **over):
    import comfy.ldm.flux.model as fm
    import comfy.ops
    sd = meta_state_dict(lambda: fm.Flux(operations=comfy.ops.disable_weight_init, device="meta", **dict(FLUX, **over)))
    return {k: v.to(dtype) for k, v in fill(sd, seed).items()}


def make_vae():
    import comfy.ldm.modules.diffusionmodules.model as ae
    enc = meta_state_dict(lambda: ae.Encoder(**VAE))
    dec = meta_state_dict(lambda: ae.Decoder(**VAE))
    sd = {**{"encoder." + k: v for k, v in enc.items()}, **{"decoder." + k: v for k, v in dec.items()}}
    return fill(sd, 2)


def make_clip_l(**over):
    import json
    import comfy.clip_model, comfy.ops, comfy.sd1_clip
    cfg = json.load(open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")))
    cfg.update(CLIP_L, **over)
    sd = meta_state_dict(lambda: comfy.clip_model.CLIPTextModel(cfg, torch.float32, "meta", comfy.ops.disable_weight_init))
    sd = fill(sd, 3)
    # position_ids not stored in real files; keep only parameters
    return {k: v for k, v in sd.items() if "position_ids" not in k}


def make_t5():
    import json
    import comfy.text_encoders.t5 as t5, comfy.ops
    cfg = json.load(open(os.path.join(os.path.dirname(t5.__file__), "t5_config_xxl.json")))
    cfg.update(T5)
    sd = meta_state_dict(lambda: t5.T5(cfg, torch.float32, "meta", comfy.ops.disable_weight_init))
    sd = fill(sd, 4)
    return {k: v.to(torch.float16) for k, v in sd.items()}


def make_sdxl_checkpoint():
    """A CheckpointLoaderSimple file in the layout of real SDXL checkpoints: model.diffusion_model.*,
    conditioner.embedders.0.transformer.text_model.* (CLIP-L, HF), conditioner.embedders.1.model.* (CLIP-G,
    OpenCLIP layout: resblocks, in_proj, text_projection), first_stage_model.* (SD VAE with quant convs)."""
    import json
    import comfy.clip_model, comfy.ops, comfy.sdxl_clip, comfy.diffusers_convert
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ldm.modules.diffusionmodules.model as ae
    ops = comfy.ops.disable_weight_init
    unet = meta_state_dict(lambda: oai.UNetModel(dtype=torch.float32, device="meta", operations=ops, **SDXL_UNET))
    out = {"model.diffusion_model." + k: v for k, v in fill(unet, 6).items()}
    # SDXL reads the penultimate layer of both encoders: they need at least 3 layers
    out.update({"conditioner.embedders.0.transformer." + k: v for k, v in make_clip_l(num_hidden_layers=3).items()
                if k.startswith("text_model.")})
    cfg = json.load(open(os.path.join(os.path.dirname(comfy.sdxl_clip.__file__), "clip_config_bigg.json")))
    cfg.update(CLIP_G)
    g = meta_state_dict(lambda: comfy.clip_model.CLIPTextModel(cfg, torch.float32, "meta", ops))
    g = {"clip_g.transformer." + k: v for k, v in fill(g, 7).items() if "position_ids" not in k}
    g = comfy.diffusers_convert.convert_text_enc_state_dict_v20(g, "clip_g")   # HF -> OpenCLIP, as ComfyUI saves
    out.update({"conditioner.embedders.1.model." + k[len("clip_g."):]: v for k, v in g.items()})
    enc = meta_state_dict(lambda: ae.Encoder(**SD_VAE))
    dec = meta_state_dict(lambda: ae.Decoder(**SD_VAE))
    z = SD_VAE["z_channels"]
    vae = {**{"encoder." + k: v for k, v in enc.items()}, **{"decoder." + k: v for k, v in dec.items()},
           "quant_conv.weight": torch.empty(2 * z, 2 * z, 1, 1), "quant_conv.bias": torch.empty(2 * z),
           "post_quant_conv.weight": torch.empty(z, z, 1, 1), "post_quant_conv.bias": torch.empty(z)}
    out.update({"first_stage_model." + k: v for k, v in fill(vae, 8).items()})
    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in out.items()}


def make_sdxl_controlnet():
    """A ControlNet for the tiny SDXL UNet in the original layout (`control_model.*`, as ControlNetLoader reads
    SD / SDXL ControlNets): ComfyUI's own cldm.ControlNet with the UNet's config and an RGB hint."""
    import comfy.cldm.cldm as cldm
    import comfy.ops
    cfg = {k: v for k, v in SDXL_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
    sd = meta_state_dict(lambda: cldm.ControlNet(hint_channels=3, dtype=torch.float32, device="meta",
                                                 operations=comfy.ops.disable_weight_init, **cfg))
    return {"control_model." + k: v for k, v in fill(sd, 15).items()}


def make_sdxl_control_lora(controlnet):
    """Stability's Control-LoRA format (a `lora_controlnet` entry marks it) for the tiny SDXL UNet: the ControlNet's
    own layers (hint network, zero convolutions, middle output) of `controlnet`; ComfyUI builds the rest of the
    control model from the UNet's weights when sampling starts (ControlLora.pre_run)."""
    own = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    out = {k: v for k, v in ((k[len("control_model."):], v) for k, v in controlnet.items()) if k.startswith(own)}
    out["lora_controlnet"] = torch.zeros(1)
    return out


def make_flux_controlnet():
    """XLabs' FLUX ControlNet format (the guide's flux-canny-controlnet-v3: double blocks only, a convolutional hint
    network for the control image), built with ComfyUI's own ControlNetFlux at the tiny FLUX widths; ComfyUI's
    ControlNetLoader reads it."""
    import comfy.ldm.flux.controlnet as flux_controlnet
    import comfy.ops
    cfg = dict(FLUX, depth=2, depth_single_blocks=0)
    sd = meta_state_dict(lambda: flux_controlnet.ControlNetFlux(mistoline=False, dtype=torch.float32, device="meta",
                                                                operations=comfy.ops.disable_weight_init, **cfg))
    return fill(sd, 16)


def make_flux_union_controlnet():
    """InstantX's FLUX Union ControlNet format (diffusers key names; `controlnet_mode_embedder` holds the union
    modes; the control image goes in as VAE latents): ComfyUI's own ControlNetFlux (latent input, 10 modes) at the
    tiny FLUX widths, its keys turned into diffusers' by ComfyUI's own map (comfy.utils.flux_to_diffusers, which
    ControlNetLoader reads them back with)."""
    import comfy.ldm.flux.controlnet as flux_controlnet
    import comfy.ops
    import comfy.utils
    cfg = dict(FLUX, depth=2, depth_single_blocks=0)
    sd = fill(meta_state_dict(lambda: flux_controlnet.ControlNetFlux(
        latent_input=True, num_union_modes=10, control_latent_channels=16, dtype=torch.float32, device="meta",
        operations=comfy.ops.disable_weight_init, **cfg)), 17)
    out, mapped = {}, set()
    for key, to in comfy.utils.flux_to_diffusers(cfg).items():
        name, offset, fun = (to, None, None) if isinstance(to, str) else (to[0], to[1], to[2] if len(to) > 2 else None)
        if name in sd:
            w = sd[name] if offset is None else sd[name].narrow(*offset)
            out[key] = (fun(w) if fun else w).clone()   # fun: swap_scale_shift, its own inverse
            mapped.add(name)
    out.update({k: v for k, v in sd.items() if k not in mapped})   # controlnet_blocks.*, the mode embedder
    return out


def make_clip_vision():
    """clip_vision_l.safetensors (the guide's CLIP-L vision encoder, which XLabs' IP-adapter reads): ComfyUI's own
    CLIPVisionModelProjection with the ViT-L config at the CLIP_VISION widths (comfy.clip_vision.load reads it)."""
    import json
    import comfy.clip_model, comfy.clip_vision, comfy.ops
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")) as f:
        cfg = dict(json.load(f), **CLIP_VISION)
    sd = meta_state_dict(lambda: comfy.clip_model.CLIPVisionModelProjection(cfg, torch.float32, "meta",
                                                                            comfy.ops.disable_weight_init))
    return {k: v for k, v in fill(sd, 18).items() if "position_ids" not in k}


def xflux_clip_config():
    """x-flux-comfyui's CLIP vision config file (its FluxClipViT writes `flux_clip_config.json` with ViT-L's widths
    beside the CLIP vision model when the file is absent, and loads the model with transformers from it): the same
    for the tiny widths, so that XLabs' own loading path reads the tiny model."""
    vision = dict(CLIP_VISION, model_type="clip_vision_model", num_hidden_layers=24, image_size=224, patch_size=14,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": CLIP_VISION["projection_dim"],
            "text_config": {}, "vision_config": vision}


def make_xlabs_ip_adapter(flux_sd, clip_vision_sd, tokens=16, blocks=19):
    """XLabs' FLUX IP-adapter format (x-flux-comfyui "Load Flux IPAdatpter"): an image projection (CLIP image embeds
    -> `tokens` context tokens) and key / value projections for the double blocks; XLabs' loader always reads 19
    blocks (FLUX-dev's), so the file has 19 whatever the tiny model's depth."""
    g = torch.Generator().manual_seed(19)
    context = flux_sd["txt_in.weight"].shape[1]
    hidden = flux_sd["img_in.weight"].shape[0]
    embeds = clip_vision_sd["visual_projection.weight"].shape[0]

    def rand(*shape):
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(torch.bfloat16)
    out = {"ip_adapter_proj_model.proj.weight": rand(tokens * context, embeds),
           "ip_adapter_proj_model.proj.bias": rand(tokens * context),
           "ip_adapter_proj_model.norm.weight": torch.ones(context, dtype=torch.bfloat16),
           "ip_adapter_proj_model.norm.bias": torch.zeros(context, dtype=torch.bfloat16)}
    for i in range(blocks):
        for kv in ("k", "v"):
            name = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            out[f"{name}.weight"] = rand(hidden, context)
            out[f"{name}.bias"] = rand(hidden)
    return out


def make_xlabs_flux_lora(flux_sd, rank=4):
    """A FLUX LoRA in XLabs' format (x-flux-comfyui "Load Flux LoRA"): attention processors of the double blocks."""
    g = torch.Generator().manual_seed(11)
    out = {}
    i = 0
    while f"double_blocks.{i}.img_attn.qkv.weight" in flux_sd:
        for name, src in (("qkv_lora1", "img_attn.qkv"), ("qkv_lora2", "txt_attn.qkv"),
                          ("proj_lora1", "img_attn.proj"), ("proj_lora2", "txt_attn.proj")):
            o, n = flux_sd[f"double_blocks.{i}.{src}.weight"].shape
            out[f"double_blocks.{i}.processor.{name}.down.weight"] = (torch.randn(rank, n, generator=g) / n ** 0.5).to(torch.bfloat16)
            out[f"double_blocks.{i}.processor.{name}.up.weight"] = (torch.randn(o, rank, generator=g) / rank ** 0.5).to(torch.bfloat16)
        i += 1
    return out


# The seed's file names (ComfyUI/models/<folder>/<file>) and what each holds.
FILES = {
    "flux_unet": ("unet", "flux1-dev.safetensors"),
    "flux_unet_fp8": ("unet", "flux1-dev-fp8-e4m3fn.safetensors"),   # the same weights, stored in fp8
    "flux_schnell": ("unet", "flux1-schnell.safetensors"),           # a second FLUX model (no guidance embedding)
    "flux_vae": ("vae", "ae.safetensors"),
    "clip_l": ("clip", "clip_l.safetensors"),
    "t5": ("clip", "t5xxl_fp8_e4m3fn.safetensors"),
    "sdxl": ("checkpoints", "dreamshaperXL_lightningDPMSDE.safetensors"),
    "xlabs_lora": ("loras", "FLUX1_wukong_lora.safetensors"),
    "flux_lora": ("loras", "araminta_k_flux_koda.safetensors"),
    "flux_lora_b": ("loras", "flux_lora_b.safetensors"),   # more ComfyUI-format FLUX LoRAs, to stack
    "flux_lora_c": ("loras", "flux_lora_c.safetensors"),
    "sdxl_lora": ("loras", "sdxl_lora.safetensors"),
    "sdxl_controlnet": ("controlnet", "controlnet-canny-sdxl.safetensors"),
    "flux_controlnet": ("controlnet", "flux-canny-controlnet-v3.safetensors"),   # XLabs' format
    "sdxl_control_lora": ("controlnet", "control-lora-canny-rank128.safetensors"),   # Stability's Control-LoRA
    "flux_union_controlnet": ("controlnet", "flux-controlnet-union.safetensors"),      # InstantX's Union format
    "clip_vision": ("clip_vision", "clip_vision_l.safetensors"),
    "xlabs_ip_adapter": ("ipadapters", "flux-ip-adapter.safetensors"),   # XLabs' format (models/xlabs/ipadapters/)
}
NAMES = {key: file for key, (_, file) in FILES.items()}
XFLUX_CLIP_CONFIG = "flux_clip_config.json"


def generate(models_dir):
    """Write every tiny model (skips files already there). Returns {key: path}."""
    paths = {key: os.path.join(models_dir, sub, name) for key, (sub, name) in FILES.items()}
    if all(os.path.exists(p) for p in paths.values()) and os.path.exists(
            os.path.join(os.path.dirname(paths["clip_vision"]), XFLUX_CLIP_CONFIG)):
        return paths
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    flux = make_flux()
    sdxl = make_sdxl_checkpoint()
    sdxl_controlnet = make_sdxl_controlnet()
    clip_vision = make_clip_vision()
    content = {"flux_unet": flux, "flux_unet_fp8": {k: v.to(torch.float8_e4m3fn) for k, v in flux.items()},
               "flux_schnell": make_flux(seed=12, guidance_embed=False), "flux_vae": make_vae(),
               "clip_l": make_clip_l(), "t5": make_t5(), "sdxl": sdxl,
               "xlabs_lora": make_xlabs_flux_lora(flux), "flux_lora": flux_lora(flux),
               "sdxl_lora": sdxl_lora(sdxl), "sdxl_controlnet": sdxl_controlnet,
               "sdxl_control_lora": make_sdxl_control_lora(sdxl_controlnet), "flux_controlnet": make_flux_controlnet(),
               "flux_union_controlnet": make_flux_union_controlnet(),
               "clip_vision": clip_vision, "xlabs_ip_adapter": make_xlabs_ip_adapter(flux, clip_vision),
               "flux_lora_b": flux_lora(flux, seed=13, targets=("double_blocks.0.img_attn.qkv",
                                                                 "double_blocks.1.img_mlp.2", "single_blocks.1.linear1")),
               "flux_lora_c": flux_lora(flux, seed=14, targets=("double_blocks.1.txt_attn.proj",
                                                                 "single_blocks.0.linear1", "single_blocks.1.linear2"))}
    for key, sd in content.items():
        if not os.path.exists(paths[key]):   # the others stay as they are (their mtime too)
            save_file(sd, paths[key])
    with open(os.path.join(os.path.dirname(paths["clip_vision"]), XFLUX_CLIP_CONFIG), "w") as f:
        json.dump(xflux_clip_config(), f)
    return paths
