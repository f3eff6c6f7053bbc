"""The benchmark's model sizes: ComfyUI's own FLUX / SDXL UNet classes with random weights (devkit.models), written
once as safetensors files in the benchmark's cache and loaded through ComfyUI's UNETLoader."""
import os
import time

SIZES = {
    "tiny": dict(hidden_size=64, num_heads=4, depth=2, depth_single_blocks=2, context_in_dim=32, vec_in_dim=32,
                 axes_dim=[4, 6, 6]),
    "flux-deep-narrow": dict(hidden_size=256, num_heads=2, depth=19, depth_single_blocks=38, context_in_dim=4096,
                             vec_in_dim=768, axes_dim=[16, 56, 56]),
    "flux-dev": dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, context_in_dim=4096,
                     vec_in_dim=768, axes_dim=[16, 56, 56]),
    # SDXL: ComfyUI's own UNet config for SDXL (supported_models.SDXL + model_detection), base width varied
    "sdxl-narrow": dict(model_channels=64),
    "sdxl": dict(model_channels=320),
}
SDXL_UNET = dict(in_channels=4, out_channels=4, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_head_channels=64,
                 num_heads=-1, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
                 image_size=32, use_spatial_transformer=True, legacy=False, use_temporal_resblock=False,
                 use_temporal_attention=False)
TEXT_TOKENS = {"flux": 256, "sdxl": 77}
def family(size):
    return "sdxl" if size.startswith("sdxl") else "flux"


def say(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- models ---------------------------------------------------------------------------------------------------------
def state_dicts(size, dtype, device=None):
    """(diffusion model, LoRA) state dicts for `size`: ComfyUI's own class with random weights (devkit.models)."""
    from devkit import models
    if family(size) == "sdxl":
        sd = models.sdxl_unet_state_dict(dict(SDXL_UNET, **SIZES[size]), dtype, device=device)
        return sd, models.sdxl_lora({"model.diffusion_model." + k: v for k, v in sd.items()})
    dims = dict(in_channels=16, out_channels=16, mlp_ratio=4.0, theta=10000, patch_size=2, qkv_bias=True,
                guidance_embed=True, **SIZES[size])
    sd = models.flux_state_dict(dims, dtype, device=device)
    return sd, models.flux_lora(sd)


def model_file(models_dir, size, dtype):
    from safetensors.torch import save_file
    path = os.path.join(models_dir, "unet", f"bench-{size}.safetensors")
    lora = os.path.join(models_dir, "loras", f"bench-{size}-lora.safetensors")
    if os.path.exists(path) and os.path.exists(lora):
        return os.path.basename(path), os.path.basename(lora)
    say(f"building {size} weights ({'SDXL UNetModel' if family(size) == 'sdxl' else 'Flux'}, ComfyUI's class, "
        f"random) -> {path}")
    sd, lora_sd = state_dicts(size, dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(os.path.dirname(lora), exist_ok=True)
    save_file(sd, path)
    save_file(lora_sd, lora)
    return os.path.basename(path), os.path.basename(lora)
