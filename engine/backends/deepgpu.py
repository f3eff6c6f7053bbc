"""Alibaba DeepGPU (`deepgpu-torch`, imported as `deepytorch`): proprietary, installed from Alibaba's own index for
torch 2.5 + cu124 only. Never imported at package load; probed at run time.

The adapter accepts either entry point the package may offer, in this order:
1. a dynamo backend it registers (named 'deepgpu' or 'deepytorch'): used through torch.compile;
2. a module-level `compile(module, **options)` function returning a callable.
Neither could be verified against the real package here (it cannot be obtained outside Alibaba Cloud): the tests
exercise this adapter against a labelled test double (tests/doubles/deepytorch).
"""
import importlib
import importlib.util
import os
import types

import torch

from .base import Backend
from .inductor import _compiled_forward, parameter_shapes

MODULE_NAMES = ("deepytorch", "deepgpu_torch")
DYNAMO_NAMES = ("deepgpu", "deepytorch")
# The DeepGPU docs for Function Compute ask for these; we default them (never override the user's).
ENV_DEFAULTS = {"DEEPGPU_PUB_LS": "true", "DEEPGPU_ENABLE_FLUX_LORA": "true"}


def _find_module():
    for name in MODULE_NAMES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


class DeepGPUBackend(Backend):
    name = "deepgpu"

    def __init__(self):
        self._module = None
        self._dynamo_name = None

    def available(self):
        module_name = _find_module()
        if module_name is None:
            return False, "deepgpu-torch is not installed (optional; Alibaba's own index, torch 2.5 + cu124 only)"
        try:
            self._module = importlib.import_module(module_name)
        except Exception as e:
            return False, f"deepgpu-torch is installed but failed to import: {type(e).__name__}: {e}"
        registered = set(torch._dynamo.list_backends(exclude_tags=()))
        self._dynamo_name = next((n for n in DYNAMO_NAMES if n in registered), None)
        if self._dynamo_name is None and not callable(getattr(self._module, "compile", None)):
            return False, f"'{module_name}' offers neither a dynamo backend {DYNAMO_NAMES} nor a compile() function"
        version = getattr(self._module, "__version__", "unknown version")
        return True, f"'{module_name}' {version} found"

    def compile(self, module, options):
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if self._module is None:
            ok, reason = self.available()
            if not ok:
                raise RuntimeError(reason)
        if self._dynamo_name is not None:
            return types.MethodType(_compiled_forward(type(module), self._dynamo_name, options,
                                                      shapes=parameter_shapes(module)), module)
        return self._module.compile(module, **options.torch_compile_kwargs())
