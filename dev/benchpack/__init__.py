"""BENCHMARK-ONLY custom-node pack, loaded beside ComfyUI-DeepyTorch by the cold-start benchmark's server processes
(benchmarks/coldstart.py): the width shims that let ComfyUI's loaders read the benchmark's narrow models and the tiny
VAEs, and one node that gives random conditioning of the benchmark model's widths (the narrow sizes keep FLUX's T5
width 4096, which no tiny text encoder has; text encoding is not what the benchmark times). Never shipped to users."""
import os
import sys

_DEV = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))   # ComfyUI loads this pack through a symlink
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from devkit import tiny_shim, widths  # noqa: E402

tiny_shim.install()
widths.install()


class BenchConditioning:
    """Random conditioning (fixed seed) of the shape FLUX or SDXL text encoders give."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (["flux", "sdxl"], {"tooltip": "which model family's conditioning"}),
            "context_dim": ("INT", {"default": 4096, "min": 1, "max": 8192, "tooltip": "text token width"}),
            "pooled_dim": ("INT", {"default": 768, "min": 1, "max": 8192, "tooltip": "pooled vector width"}),
            "tokens": ("INT", {"default": 256, "min": 1, "max": 4096, "tooltip": "text tokens"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31, "tooltip": "random seed"}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "benchmark"

    def make(self, family, context_dim, pooled_dim, tokens, seed):
        import torch
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, pooled_dim, generator=g)}
        if family == "flux":
            extra["guidance"] = 3.5
        return ([[torch.randn(1, tokens, context_dim, generator=g), extra]],)


NODE_CLASS_MAPPINGS = {"BenchConditioning": BenchConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"BenchConditioning": "Bench conditioning (benchmark-only)"}
