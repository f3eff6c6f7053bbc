import types

import torch

from ..engine import log
from ..engine.hint_cache import HintCache
from . import attention
from .accelerate import accelerate
from .common import CATEGORY, compile_inputs


class ApplyDeepyTorchControlNet:
    """CONTROL_NET -> CONTROL_NET: a copy whose control model runs compiled; the loader's ControlNet (and every
    branch using it) stays eager."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "control_net": ("CONTROL_NET", {"tooltip": "The ControlNet to accelerate, from Load ControlNet Model / "
                                                       "DiffControlNetLoader; connect the output to Apply ControlNet. "
                                                       "The input ControlNet itself is left unchanged."}),
            **compile_inputs(),
        }}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Compiles the ControlNet's repeated blocks on first use with the best backend available (it runs "
                   "on every sampling step, outside the diffusion model).")

    def apply(self, control_net, backend, mode, dynamic):
        return (accelerate_controlnet(control_net, backend, mode, dynamic),)


def accelerate_controlnet(control_net, backend="auto", mode="default", dynamic="auto"):
    """A copy of `control_net` whose control model's blocks are compiled (object patches on a clone of its
    ModelPatcher, applied while ComfyUI has that clone loaded), or `control_net` itself, with a log line, when it is
    of a kind that cannot be accelerated."""
    model = getattr(control_net, "control_model", None)
    patcher = getattr(control_net, "control_model_wrapped", None)
    if not isinstance(model, torch.nn.Module) or patcher is None:
        why = ("ComfyUI builds its control model anew for every sampling run (pre_run) and deletes it after, so it "
               "runs eager as in ComfyUI" if hasattr(control_net, "control_weights") else
               "it has no control model ComfyUI loads as a model")
        log.info("Apply DeepyTorch to controlnet: %s passes through unchanged: %s", type(control_net).__name__, why)
        return control_net
    out = control_net.copy()
    out.control_model_wrapped = patcher.clone()   # the copy's own patcher: its object patches are the compiled blocks
    label = f"ControlNet {type(model).__name__}"
    cache_hint(out.control_model_wrapped, label)
    accelerated = accelerate(out.control_model_wrapped, "", label, backend, mode, dynamic,
                             context=attention.context("auto"))
    if accelerated is not None and attention.comfy_uses_slow_attention() and hasattr(attention._attention(),
                                                                                    "attention_pytorch"):
        # ComfyUI calls the control model without transformer_options: the per-model override cannot reach it
        accelerated.call_context = attention.sdpa_rebound()
        accelerated.eager_context = attention.comfy_attention
        log.info("%s: attention: PyTorch SDPA (rebound while its regions run)", label)
    return out


def cache_hint(patcher, label):
    """The hint network (`input_hint_block`) computed once per control image, as an object patch of this patcher.
    Only where it is plain layers: blocks that use the timestep embedding or the context it is handed would change
    with the step."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock, TimestepEmbedSequential
    block = getattr(patcher.model, "input_hint_block", None)
    if not isinstance(block, torch.nn.Module):
        return None
    if any(isinstance(m, (TimestepBlock, SpatialTransformer)) and not isinstance(m, TimestepEmbedSequential)
           for m in block.modules()):
        log.info("%s: its hint network uses the step; computed on every call as in ComfyUI", label)
        return None
    cache = HintCache(types.MethodType(type(block).forward, block))
    patcher.add_object_patch("input_hint_block.forward", cache)
    return cache
