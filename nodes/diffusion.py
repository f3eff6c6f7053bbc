from ..engine.regional import SCOPES
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
                      "regional: compile the repeated blocks (fast compile, identical blocks share code). whole: "
                      "compile the whole diffusion model as one graph."}),
            "fullgraph": ("BOOLEAN", {"default": False, "tooltip":
                          "Require one graph per compiled region (errors instead of graph breaks)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Compiles the diffusion model with the best backend available (DeepGPU, torch.compile, eager) on "
                   "first use. LoRA-safe: weights are updated in place.")

    def apply(self, model, backend, mode, dynamic, scope, fullgraph):
        m = model.clone()
        m.weight_inplace_update = True   # compiled code keeps its weight tensors: LoRA must patch them in place
        accelerate(m, "diffusion_model", type(m.model).__name__, backend, mode, dynamic, fullgraph, scope)
        return (m,)
