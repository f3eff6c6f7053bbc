import copy

import torch

from ..engine import log
from . import attention
from .accelerate import accelerate
from .common import CATEGORY, compile_inputs

PARTS = {"both": ("decoder", "encoder"), "decoder": ("decoder",), "encoder": ("encoder",)}


class ApplyDeepyTorchVAE:
    """VAE -> VAE: a copy whose decoder/encoder run compiled; the input VAE (and every branch using it) stays eager."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The VAE to accelerate (FLUX ae.safetensors, or the VAE of an SD/SDXL "
                                       "checkpoint). The input VAE itself is left unchanged."}),
            **compile_inputs(),
            "parts": (list(PARTS), {"default": "both", "tooltip":
                      "Which parts to compile: decoder (VAE Decode), encoder (VAE Encode, img2img), or both."}),
        }}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Compiles the VAE decoder/encoder on first use with the best backend available."

    def apply(self, vae, backend, mode, dynamic, parts):
        out = copy.copy(vae)                     # shares the weights; only the patcher differs
        out.patcher = vae.patcher.clone()
        accelerate_vae(out, backend, mode, dynamic, parts)
        return (out,)


def accelerate_vae(vae, backend="auto", mode="default", dynamic="auto", parts="both"):
    """Accelerate the given VAE object's patcher itself (the node passes a copy; DEEPYTORCH_AUTO the loader's VAE).
    Returns the AcceleratedModel, or None when eager."""
    model = vae.patcher.model
    present = tuple(p for p in PARTS[parts] if isinstance(getattr(model, p, None), torch.nn.Module))
    if not present:
        raise ValueError(f"Apply DeepyTorch to vae model: input 'vae' has no {' or '.join(PARTS[parts])} "
                         f"module to accelerate ({type(model).__name__})")
    label = f"VAE {type(model).__name__}"
    accelerated = accelerate(vae.patcher, "", label, backend, mode, dynamic, parts=present, context="vae-sdpa")
    if accelerated is not None and attention.configure_vae(vae.patcher, present):
        accelerated.eager_context = attention.comfy_attention
        log.info("%s: attention: PyTorch SDPA instead of ComfyUI's split attention (in this copy only)", label)
    return accelerated
