"""Random-weight models built with ComfyUI's own module classes (on the meta device first, so nothing is allocated
twice), in the key format of the real files, and LoRAs for them. Needs comfy.* importable (a booted ComfyUI, see
comfy_boot) only for the builders that name ComfyUI classes; the fillers are plain torch."""
import torch


def fill(sd, seed=0, dtype=None, device=None):
    """Deterministic weights for a (meta) state dict; `dtype` converts each tensor as it is made (a full-size
    FLUX in float32 would need 48 GB at once); `device` makes them there (a GPU fills FLUX-dev in seconds)."""
    g = torch.Generator(device or "cpu").manual_seed(seed)
    out = {}
    for k, v in sd.items():
        shape = tuple(v.shape)
        lk = k.lower()
        if ("norm" in lk or "ln_" in lk or "layer_norm" in lk) and (k.endswith(".weight") or k.endswith(".scale")):
            t = torch.ones(shape, device=device)
        elif k.endswith(".weight") and len(shape) == 1:   # unnamed norms (SD UNet GroupNorms: in_layers.0, out.0)
            t = torch.ones(shape, device=device)
        elif k.endswith(".bias"):
            t = torch.zeros(shape, device=device)
        elif len(shape) >= 2:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            t = torch.randn(shape, generator=g, device=device) / fan_in ** 0.5   # unit-variance activations
        else:
            t = torch.randn(shape, generator=g, device=device) * 0.02
        out[k] = (t if dtype is None else t.to(dtype)).contiguous()
    return out


def meta_state_dict(build):
    with torch.device("meta"):
        m = build()
    return {k: v for k, v in m.state_dict().items()}


def sdxl_lora(ckpt, rank=4):
    """A kohya-style SDXL LoRA (lora_unet_*) on the UNet's attention projections."""
    g = torch.Generator().manual_seed(9)
    out = {}
    for k, w in ckpt.items():
        if k.startswith("model.diffusion_model.") and k.endswith((".attn1.to_q.weight", ".attn2.to_k.weight")):
            name = "lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
            o, i = w.shape
            out[name + ".lora_down.weight"] = (torch.randn(rank, i, generator=g) / i ** 0.5).half()
            out[name + ".lora_up.weight"] = (torch.randn(o, rank, generator=g) / rank ** 0.5).half()
            out[name + ".alpha"] = torch.tensor(float(rank))
    return out


def flux_lora(flux_sd, rank=4, targets=("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_mlp.0",
                                           "single_blocks.0.linear1", "single_blocks.0.linear2", "final_layer.linear"),
              seed=5):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in targets:
        w = flux_sd[t + ".weight"]
        o, i = w.shape
        out[f"diffusion_model.{t}.lora_down.weight"] = (torch.randn(rank, i, generator=g) / i ** 0.5).to(torch.bfloat16)
        out[f"diffusion_model.{t}.lora_up.weight"] = (torch.randn(o, rank, generator=g) / rank ** 0.5).to(torch.bfloat16)
        out[f"diffusion_model.{t}.alpha"] = torch.tensor(float(rank))
    return out


def flux_state_dict(dims, dtype, seed=1, device=None):
    """ComfyUI's Flux class with random weights at `dims` (its constructor's keyword arguments), in `dtype`."""
    import comfy.ldm.flux.model as fm
    import comfy.ops
    sd = meta_state_dict(lambda: fm.Flux(operations=comfy.ops.disable_weight_init, device="meta", **dims))
    return fill(sd, seed, dtype, device)


def sdxl_unet_state_dict(unet, dtype, seed=1, device=None):
    """ComfyUI's UNetModel with random weights at `unet` (its constructor's keyword arguments), in `dtype`."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    sd = meta_state_dict(lambda: oai.UNetModel(dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init,
                                               **unet))
    return fill(sd, seed, dtype, device)
