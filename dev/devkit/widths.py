"""Let ComfyUI's loaders read the widths of *narrow* FLUX / SDXL diffusion models from their tensors.

ComfyUI hard-codes FLUX's widths (hidden 3072 / 24 heads, T5 context 4096) and matches SD UNets to a model family by
exact widths (SDXL: 320 channels). The benchmark's CPU sizes (flux-deep-narrow, sdxl-narrow) and the tests' tiny
models keep every key name and depth of the real models and only narrow the widths, so with `install()` they load
through ComfyUI's own path (model detection, UNETLoader, ModelPatcher). Real-size files are untouched. A
development tool: it wraps two functions of `comfy.model_detection` in the process that calls it (idempotent); the
node pack never imports it.
"""
import functools

_installed = {}


def flux_dims(sd, prefix=""):
    hidden = sd[f"{prefix}img_in.weight"].shape[0]
    head_dim = sd[f"{prefix}double_blocks.0.img_attn.norm.key_norm.scale"].shape[0]
    b = (head_dim * 7 // 16) // 2 * 2          # 128 -> [16, 56, 56] like real FLUX
    out = {
        "hidden_size": hidden,
        "num_heads": hidden // head_dim,
        "context_in_dim": sd[f"{prefix}txt_in.weight"].shape[1],
        "mlp_ratio": sd[f"{prefix}double_blocks.0.img_mlp.0.weight"].shape[0] / hidden,
        "axes_dim": [head_dim - 2 * b, b, b],
    }
    if f"{prefix}vector_in.in_layer.weight" in sd:   # ComfyUI <= early 2025 hard-codes 768
        out["vec_in_dim"] = sd[f"{prefix}vector_in.in_layer.weight"].shape[1]
    return out


def install():
    if _installed:
        return
    import comfy.model_detection as md

    # ---- FLUX diffusion model ----
    orig_detect = md.detect_unet_config

    @functools.wraps(orig_detect)
    def detect_unet_config(state_dict, key_prefix, *a, **k):
        cfg = orig_detect(state_dict, key_prefix, *a, **k)
        if cfg is not None and cfg.get("image_model") == "flux" and f"{key_prefix}img_in.weight" in state_dict:
            if state_dict[f"{key_prefix}img_in.weight"].shape[0] != cfg.get("hidden_size"):
                cfg.update(flux_dims(state_dict, key_prefix))
        return cfg
    md.detect_unet_config = detect_unet_config

    # ---- SD UNets: ComfyUI picks the family by exact widths; a tiny SDXL-shaped UNet is matched to SDXL ----
    import comfy.supported_models as sm
    orig_match = md.model_config_from_unet_config

    @functools.wraps(orig_match)
    def model_config_from_unet_config(unet_config, *a, **k):
        if (unet_config.get("adm_in_channels") and unet_config.get("model_channels", 320) < 320
                and not unet_config.get("use_temporal_attention") and len(unet_config.get("channel_mult", [])) == 3):
            return sm.SDXL(unet_config)
        return orig_match(unet_config, *a, **k)
    md.model_config_from_unet_config = model_config_from_unet_config

    _installed["ok"] = True
