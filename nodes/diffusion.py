from ..engine import log
from ..engine.regional import SCOPES
from . import attention as attention_choice
from .accelerate import accelerate
from .common import CATEGORY, compile_inputs


class ApplyDeepyTorchDiffusionModel:
    """MODEL -> MODEL: a clone whose diffusion model runs compiled; the input model stays eager."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to accelerate (after LoRA loaders is fine: LoRA "
                                           "weights are patched in place and stay in effect)."}),
            **compile_inputs(),
            "scope": (SCOPES, {"default": "regional", "tooltip":
                      "regional: compile the repeated blocks (fast compile, identical blocks share code; every "
                      "sampler). whole: compile the whole diffusion model as one graph (ComfyUI's samplers only: "
                      "the DeepTorch Sampler / XlabsSampler call the FLUX transformer below it)."}),
            "fullgraph": ("BOOLEAN", {"default": False, "tooltip":
                          "Require one graph per compiled region: a graph break stops the workflow with an error "
                          "naming the region and the break (no fall-back to eager). false: torch.compile splits the "
                          "graph there and runs the rest compiled."}),
            "attention": (attention_choice.ATTENTION_CHOICES, {"default": "auto", "tooltip":
                          "auto: PyTorch SDPA where ComfyUI would use its slower sub-quadratic/split attention "
                          "(e.g. on CPU), else ComfyUI's choice. comfy: never change it. sdpa: always SDPA. "
                          "Applies to this model only."}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Compiles the diffusion model with the best backend available (DeepGPU, torch.compile, eager) on "
                   "first use. LoRA-safe: weights are updated in place.")

    def apply(self, model, backend, mode, dynamic, scope, fullgraph, attention="auto"):
        m = model.clone()
        accelerate_diffusion(m, backend, mode, dynamic, scope, fullgraph, attention)
        return (m,)


def accelerate_diffusion(m, backend="auto", mode="default", dynamic="auto", scope="regional", fullgraph=False,
                         attention="auto"):
    """Accelerate the diffusion model of the ModelPatcher `m` itself (the node passes a clone; DEEPYTORCH_AUTO the
    loader's patcher). Returns the AcceleratedModel, or None when eager."""
    m.weight_inplace_update = True   # compiled code keeps its weight tensors: LoRA must patch them in place
    label = type(m.model).__name__
    accelerated = accelerate(m, "diffusion_model", label, backend, mode, dynamic, fullgraph, scope,
                             context=attention_choice.context(attention))
    if accelerated is not None or attention == "sdpa":   # eager + auto: the model stays exactly ComfyUI's
        how, call_context = attention_choice.configure(m, attention)
        if accelerated is not None:
            accelerated.call_context = call_context
            accelerated.eager_context = attention_choice.comfy_attention
        elif call_context is not None:
            how = "ComfyUI's choice (this ComfyUI can switch attention only inside compiled regions)"
        log.info("%s: attention: %s", label, how)
    return accelerated
