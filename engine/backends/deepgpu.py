"""Alibaba DeepGPU: proprietary, installed from Alibaba's own index for torch 2.5 + cu124 only. Never imported at
package load; probed at run time.

Entry points, probed in this order (the first one found is used):
1. `DEEPYTORCH_DEEPGPU_ENTRY=module:function`, named by the user: called as the documented ones below (a TorchScript
   module in, a callable out);
2. `deepytorch` / `deepgpu_torch` (deepgpu-torch): a dynamo backend it registers ('deepgpu' or 'deepytorch'), used
   through torch.compile (identical blocks share the compiled code), else its `compile(module, **options)`;
3. `deepytorch_inference.compile(m)` (Deepytorch Inference, documented on a TorchScript module) and
   `aiacctorch.compile(m)` (its predecessor AIACC, the same form): each block is traced with `torch.jit.trace` at
   its first call's inputs; every block is traced on its own (a trace holds its block's weights, so identical
   blocks cannot share one), again for a new input signature.
A backend that calls the module it gets never reaches DeepyTorch's installed region (infinite recursion): it gets
a wrapper that runs the block class's own forward. A failed trace raises from the region's first call, and the
model falls back to eager with the reason logged.
None of these could be verified against the real packages here (they cannot be obtained outside Alibaba Cloud): the
tests exercise each entry point against a labelled test double (tests/doubles).
"""
import importlib
import importlib.util
import os
import types

import torch

from .. import log
from .base import Backend
from .inductor import _compiled_forward, parameter_shapes

ENTRY_ENV = "DEEPYTORCH_DEEPGPU_ENTRY"
MODULE_NAMES = ("deepytorch", "deepgpu_torch")
DYNAMO_NAMES = ("deepgpu", "deepytorch")
TORCHSCRIPT_MODULES = ("deepytorch_inference", "aiacctorch")   # documented as <module>.compile(torchscript_module)
# The DeepGPU docs for Function Compute ask for these; we default them (never override the user's).
ENV_DEFAULTS = {"DEEPGPU_PUB_LS": "true", "DEEPGPU_ENABLE_FLUX_LORA": "true"}
_env_logged = []


def _find(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _own_dynamo_backend(module_name, module):
    """The name of a dynamo backend this package registered: one of DYNAMO_NAMES defined in it (another package may
    have registered the name), or any of them if the package has no compile() to fall back on."""
    registered = set(torch._dynamo.list_backends(exclude_tags=()))
    names = [n for n in DYNAMO_NAMES if n in registered]
    for name in names:
        try:
            fn = torch._dynamo.lookup_backend(name)
        except Exception:
            continue
        if str(getattr(fn, "__module__", "")).split(".")[0] == module_name:
            return name
    if names and not callable(getattr(module, "compile", None)):
        return names[0]
    return None


def _set_env_defaults():
    set_now = {k: v for k, v in ENV_DEFAULTS.items() if k not in os.environ}
    for key, value in set_now.items():
        os.environ[key] = value
    if not _env_logged:
        _env_logged.append(True)
        log.info("DeepGPU: environment %s (process-wide; the variables you set yourself are kept)",
                 ", ".join(f"{k}={os.environ[k]}" for k in ENV_DEFAULTS))


class _ClassForward(torch.nn.Module):
    """What a backend gets instead of the block: calling it runs the block class's own forward, never the region
    DeepyTorch installed as the block's `forward` (which would call the backend again). The block's parameters are
    this module's (`block.*`), so in-place weight updates are seen."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        return type(self.block).forward(self.block, *args, **kwargs)


_TENSOR = object()   # a tensor's slot among a call's leaves


class _TracedInputs(torch.nn.Module):
    """The block as a function of its tensor inputs only (what torch.jit.trace accepts): the call's other values
    (option dicts, ints, functions) are fixed for this trace."""

    def __init__(self, block, spec, leaves):
        super().__init__()
        self.block = block
        self.spec = spec
        self.leaves = leaves          # non-tensor leaves; tensor slots are _TENSOR

    def forward(self, *tensors):
        it = iter(tensors)
        leaves = [next(it) if leaf is _TENSOR else leaf for leaf in self.leaves]
        args, kwargs = torch.utils._pytree.tree_unflatten(leaves, self.spec)
        return type(self.block).forward(self.block, *args, **kwargs)


def _signature(spec, leaves):
    def key(v):
        if isinstance(v, torch.Tensor):
            return ("tensor", tuple(v.shape), str(v.dtype), str(v.device))
        if v is None or isinstance(v, (bool, int, float, str)):
            return (type(v).__name__, v)
        if callable(v):
            return ("callable", id(v))
        # other objects (ComfyUI's per-prompt cond uuids): by type, or every prompt would trace again
        return ("object", type(v).__qualname__)
    return str(spec), tuple(key(v) for v in leaves)


def _torchscript_forward(entry, module):
    """A forward for `module` that traces it at the first call of each input signature and runs what `entry` made of
    the trace."""
    compiled = {}

    def forward(*args, **kwargs):
        leaves, spec = torch.utils._pytree.tree_flatten((args, kwargs))
        key = _signature(spec, leaves)
        fn = compiled.get(key)
        if fn is None:
            tensors = tuple(v for v in leaves if isinstance(v, torch.Tensor))
            wrapper = _TracedInputs(module, spec, [_TENSOR if isinstance(v, torch.Tensor) else v for v in leaves])
            with torch.no_grad():   # on copies: blocks may update their inputs in place (current ComfyUI's FLUX)
                traced = torch.jit.trace(wrapper, tuple(t.clone() for t in tensors), check_trace=False, strict=False)
            fn = compiled[key] = entry(traced)
        return fn(*(v for v in leaves if isinstance(v, torch.Tensor)))
    return forward


class DeepGPUBackend(Backend):
    name = "deepgpu"

    def __init__(self):
        self._entry = None   # (kind, callable or dynamo name, where from)

    def _probe(self):
        """(entry, None) or (None, reason): the first entry point found, in the order of the module docstring."""
        named = os.environ.get(ENTRY_ENV)
        if named:
            module_name, _, function = named.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), function or "compile")
            except Exception as e:
                return None, f"{ENTRY_ENV}={named!r} cannot be loaded: {type(e).__name__}: {e}"
            if not callable(fn):
                return None, f"{ENTRY_ENV}={named!r} is not a function"
            return ("torchscript", fn, f"{ENTRY_ENV}={named}"), None
        errors = []
        for module_name in MODULE_NAMES + TORCHSCRIPT_MODULES:
            if not _find(module_name):
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as e:
                errors.append(f"'{module_name}' is installed but failed to import: {type(e).__name__}: {e}")
                continue
            where = f"'{module_name}' {getattr(module, '__version__', 'unknown version')}"
            if module_name in MODULE_NAMES:
                dynamo_name = _own_dynamo_backend(module_name, module)
                if dynamo_name is not None:
                    return ("dynamo", dynamo_name, f"{where}, dynamo backend '{dynamo_name}'"), None
                if callable(getattr(module, "compile", None)):
                    return ("module", module.compile, f"{where}, {module_name}.compile(module)"), None
                errors.append(f"'{module_name}' offers neither a dynamo backend {DYNAMO_NAMES} nor a compile() "
                              "function")
            elif callable(getattr(module, "compile", None)):
                return ("torchscript", module.compile, f"{where}, {module_name}.compile(torchscript)"), None
            else:
                errors.append(f"'{module_name}' has no compile() function")
        if errors:
            return None, "; ".join(errors)
        return None, ("deepgpu-torch is not installed (optional; Alibaba's own index, torch 2.5 + cu124 only; nor "
                      f"{' / '.join(TORCHSCRIPT_MODULES)}, nor {ENTRY_ENV})")

    def available(self):
        self._entry, reason = self._probe()
        if self._entry is None:
            return False, reason
        return True, f"{self._entry[2]} found"

    def compile(self, module, options):
        _set_env_defaults()
        if self._entry is None:
            ok, reason = self.available()
            if not ok:
                raise RuntimeError(reason)
        kind, entry, _ = self._entry
        if kind == "dynamo":
            return types.MethodType(_compiled_forward(type(module), entry, options,
                                                      shapes=parameter_shapes(module)), module)
        if kind == "module":
            return entry(_ClassForward(module), **options.torch_compile_kwargs())
        return _torchscript_forward(entry, module)
