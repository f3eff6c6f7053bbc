import functools
import importlib.util
import inspect
import itertools
import shutil
import types

import torch

from .. import precompiled
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
        return types.MethodType(_compiled_forward(type(module), self.name, options, cpu_passes=self.cpu_passes(),
                                                  shapes=parameter_shapes(module)), module)

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


_copies = itertools.count()


def private_copy(fn):
    """`fn` with its own code object. dynamo keeps its cache entries and recompile limit per code object: on the
    class's own `forward` they would be shared with anyone else compiling that class in this process (ComfyUI's
    TorchCompileModel, another node pack), whose entries can exhaust the limit and silently send our regions to
    eager. The name differs too (`<name>_deepytorch`): dynamo keeps its size history for automatic dynamic shapes
    by file, line and name, so ours stays apart from theirs, while our copies for one class share it (see
    parameter_shapes). Each copy's code is unequal to every other's (an unused constant of its own): code objects
    compare by value, and torch's guard failures and the recompile reasons AcceleratedModel has counted
    (`_seen_failures`) are both kept in dicts keyed by code, where equal copies (one class at two widths,
    shared by a UNet and its ControlNet) would pool their recompile reasons and each region would count the others'
    recompiles as its own."""
    code = getattr(fn, "__code__", None)
    if not isinstance(fn, types.FunctionType) or code is None:
        return fn
    code = code.replace(co_name=f"{code.co_name}_deepytorch",
                        co_consts=code.co_consts + (("deepytorch private copy", next(_copies)),))
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__module__ = fn.__module__
    copy.__dict__.update(fn.__dict__)
    return copy


def parameter_shapes(module):
    """Which blocks share a compiled function (its cache entries and recompile limit): blocks of one class with the
    same parameter shapes. A UNet's levels (one class, a width each) would otherwise pile every level's graphs into
    one function, each level change counted as a recompile, towards one limit. The copies of a class keep one size
    history (same name): with dynamic 'auto', a class seen at several sizes (the UNet's levels) compiles dynamic at
    once, so a new resolution costs a few recompiles, not one per width (SDXL narrow, CPU: 5 s, against 71 s with
    a history per width, whose static graphs compiled 17 s faster at the first resolution and ran no faster)."""
    return tuple((name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters())


def _counted(compiled, counter):
    """The backend's compiled graph, counting its calls: the proof that compiled code ran (dynamo runs a frame it
    skipped - recompile limit, a frame it cannot compile - eagerly, and nothing else would tell)."""
    def graph(*args):
        counter[0] += 1
        return compiled(*args)
    if hasattr(compiled, "_boxed_call"):   # dynamo's calling convention travels with the callable
        graph._boxed_call = compiled._boxed_call
    return graph


_counting_inductor = None


def _counting_backend(backend_name, mode, options, dynamic, counter):
    """The backend torch.compile gets: the named one, with its compiled graphs counted (`counter`). For inductor a
    subclass of torch.compile's own inductor wrapper (the same mode / options handling and config identity), where
    this torch has it (feature-detected; else the backend name, uncounted)."""
    global _counting_inductor
    if backend_name == "inductor":
        base = getattr(torch, "_TorchCompileInductorWrapper", None)
        if base is None:
            return None
        if _counting_inductor is None:
            class CountingInductor(base):
                def __call__(self, model_, inputs_, **kwargs):
                    return _counted(super().__call__(model_, inputs_, **kwargs), self.deepytorch_counter)
            _counting_inductor = CountingInductor
        backend = _counting_inductor(mode, options, dynamic)
        backend.deepytorch_counter = counter
        return backend
    inner = torch._dynamo.lookup_backend(backend_name)

    def backend(gm, example_inputs):
        return _counted(inner(gm, example_inputs), counter)
    return backend


def _inductor_settings(options, cpu_passes):
    """(mode, inductor options) for torch.compile (it takes one or the other)."""
    mode = options.torch_compile_kwargs().get("mode")
    if cpu_passes:
        inductor_options = cpu_passes_module.inductor_options(mode or "default")
        if inductor_options is not None:
            return None, inductor_options
    return mode, None


@functools.lru_cache(maxsize=None)
def _compiled_forward(cls, backend_name, options, cpu_passes=False, shapes=None):
    # One compiled function per block class and parameter shapes: identical blocks share the compiled code (and its
    # cache entries).
    kwargs = options.torch_compile_kwargs()
    mode = kwargs.pop("mode", None)
    inductor_options = None
    if backend_name == "inductor":
        mode, inductor_options = _inductor_settings(options, cpu_passes)
    if _compile_accepts("recompile_limit"):
        kwargs["recompile_limit"] = RECOMPILE_LIMIT
    forward = private_copy(cls.forward)
    counter = [0]
    backend = _counting_backend(backend_name, mode, inductor_options, kwargs["dynamic"], counter)
    if backend is None:   # no counting: torch.compile's own handling of the backend name
        counter = None
        backend = backend_name
        if backend_name == "inductor":
            kwargs.update({"options": inductor_options} if inductor_options is not None else
                          {"mode": mode} if mode else {})
    compiled = torch.compile(forward, backend=backend, **kwargs)
    compiled.deepytorch_code = getattr(forward, "__code__", None)   # where dynamo records this function's recompiles
    compiled.deepytorch_graph_calls = counter    # [calls of its compiled graphs], or None where not countable
    return compiled


@functools.lru_cache(maxsize=None)
def _precompiled_forward(cls, options, cpu_passes, shapes, directory):
    """The class's forward through precompiled artifacts (engine.precompiled), or None where that route is off; one
    per class and parameter shapes, like _compiled_forward (its fall-back)."""
    dynamo = _compiled_forward(cls, "inductor", options, cpu_passes=cpu_passes, shapes=shapes)
    mode, inductor_options = _inductor_settings(options, cpu_passes)
    if inductor_options is None and mode:
        inductor_options = dict(torch._inductor.list_mode_options(mode))
    return precompiled.route(cls, shapes, options, {"backend": "inductor", "options": inductor_options or {}}, dynamo)


class InductorBackend(DynamoBackend):
    """torch.compile with TorchInductor: C++/OpenMP kernels on CPU (plus DeepyTorch's CPU graph passes), Triton
    kernels on CUDA."""

    def __init__(self, device=None):
        super().__init__("inductor")
        self.device_type = _device_type(device)

    def cpu_passes(self):
        return self.device_type == "cpu"

    def compile(self, module, options):
        directory = precompiled.store_dir()
        if directory is not None:
            forward = _precompiled_forward(type(module), options, self.cpu_passes(), parameter_shapes(module),
                                           directory)
            if forward is not None:
                return types.MethodType(forward, module)
        return super().compile(module, options)

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
