"""Inputs shared by the DeepyTorch nodes (same names, choices and tooltips everywhere)."""
import torch

from ..engine.backends import BACKEND_CHOICES
from ..engine.backends.base import DYNAMIC_CHOICES, MODES

CATEGORY = "DeepyTorch"


def backend_choices():
    try:
        extra = sorted(n for n in torch._dynamo.list_backends(exclude_tags=()) if n not in BACKEND_CHOICES)
    except Exception:  # torch without dynamo: the fixed choices still work
        extra = []
    return BACKEND_CHOICES + extra


def compile_inputs():
    return {
        "backend": (backend_choices(), {"default": "auto", "tooltip":
                    "auto: DeepGPU if installed, else torch.compile (inductor) if usable, else eager; the log says "
                    "which and why. Any registered torch.compile backend can be chosen too."}),
        "mode": (MODES, {"default": "default", "tooltip":
                 "torch.compile mode (inductor). max-autotune tries more kernels (slow compile); reduce-overhead "
                 "uses CUDA graphs."}),
        "dynamic": (DYNAMIC_CHOICES, {"default": "auto", "tooltip":
                    "Dynamic shapes. auto: compile for the first size, then once more with dynamic sizes when the "
                    "size changes. true: dynamic from the start. false: recompile for every new size."}),
    }
