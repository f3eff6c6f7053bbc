import functools
import importlib.util
import inspect
import shutil
import types

import torch

from . import cpu_passes as cpu_passes_module
from .base import Backend


def _cpp_compiler():
    for cc in ("g++", "c++", "clang++", "cl"):
        path = shutil.which(cc)
        if path:
            return path
    return None


def _device_type(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


class DynamoBackend(Backend):
    """torch.compile with a dynamo backend given by name (e.g. 'cudagraphs', 'aot_eager', or one a package registers)."""

    def __init__(self, backend_name):
        self.name = backend_name

    def available(self):
        try:
            names = torch._dynamo.list_backends(exclude_tags=())
        except Exception as e:  # pragma: no cover - torch internals moved
            return False, f"cannot list dynamo backends: {e}"
        if self.name in names:
            return True, f"registered dynamo backend (torch {torch.__version__})"
        return False, f"no dynamo backend named '{self.name}' is registered"

    def compile(self, module, options):
        return types.MethodType(_compiled_forward(type(module), self.name, options, self.cpu_passes()), module)

    def cpu_passes(self):
        return False


# Regional compile shares one code object between many blocks of different shapes: allow more cache entries than
# dynamo's default (8) before it gives up on a block (per compiled function where torch supports it).
RECOMPILE_LIMIT = 64


def _compile_accepts(name):
    try:
        return name in inspect.signature(torch.compile).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


@functools.lru_cache(maxsize=None)
def _compiled_forward(cls, backend_name, options, cpu_passes=False):
    # One compiled function per block class: identical blocks share the compiled code (and its cache entries).
    kwargs = options.torch_compile_kwargs()
    if backend_name != "inductor":
        kwargs.pop("mode", None)
    elif cpu_passes:
        inductor_options = cpu_passes_module.inductor_options(kwargs.get("mode", "default"))
        if inductor_options is not None:
            kwargs.pop("mode", None)
            kwargs["options"] = inductor_options
    if _compile_accepts("recompile_limit"):
        kwargs["recompile_limit"] = RECOMPILE_LIMIT
    return torch.compile(cls.forward, backend=backend_name, **kwargs)


class InductorBackend(DynamoBackend):
    """torch.compile with TorchInductor: C++/OpenMP kernels on CPU (plus DeepyTorch's CPU graph passes), Triton
    kernels on CUDA."""

    def __init__(self, device=None):
        super().__init__("inductor")
        self.device_type = _device_type(device)

    def cpu_passes(self):
        return self.device_type == "cpu"

    def available(self):
        if self.device_type == "cuda":
            if importlib.util.find_spec("triton") is None:
                return False, "Triton is not installed (inductor needs it on CUDA)"
            return True, f"torch {torch.__version__} with Triton on CUDA"
        if self.device_type == "cpu":
            cc = _cpp_compiler()
            if cc is None:
                return False, "no C++ compiler found (inductor needs one on CPU)"
            return True, f"torch {torch.__version__} with C++ compiler {cc} on CPU"
        return True, f"torch {torch.__version__} on {self.device_type}"
