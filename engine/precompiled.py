"""Precompiled regions: a region's compiled code saved to the compile cache and loaded by the next process without
dynamo tracing it again (the warm start of a new serverless instance).

Route: torch.compile(fullgraph=True).aot_compile(...) -> save_compiled_function / torch.compiler.load_compiled_function
(torch >= 2.10, feature-detected). One artifact per block class + parameter shapes + input signature, shared by every
block of that class (the block is an input: its weights are read at call time, so in-place LoRA patches are seen).
Where this route cannot be used (older torch, a graph break, an input it cannot key safely) the region takes
today's torch.compile path; DEEPYTORCH_PRECOMPILE=0 turns the route off.

Saving drops the guards torch cannot serialize (globals, class identity, function identity). What they protected
is put in the artifact's key instead or checked at call time:
- the key: torch / Python / device (CPU model or GPU + CUDA + Triton), this pack's version and a hash of its
  engine/ source, the block's class, the classes and parameter shapes / dtypes of its module tree, a hash of the
  source files defining those classes, the compile options and the caller's context (attention choice), and the
  input signature (shapes, dtypes, dict keys; sizes left out where the inputs are dynamic);
- at load: the hash of every source file dynamo traced (a ComfyUI update never runs stale code);
- at call time: the identity of functions found in the inputs (e.g. the attention override), by name.
Anything that does not match, or cannot be read, is ignored with a log line and the region compiles.
Blocks of a class whose calls differ only in literal options no traced program depends on (SDXL's block ids) share
one artifact, verified by tracing (see _literal_items).
"""
import contextlib
import functools
import glob
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import types
import uuid
import weakref

import torch

from . import compile_cache, log

ENV = "DEEPYTORCH_PRECOMPILE"
FORMAT = 1
MAGIC = b"DEEPYTORCH-PRECOMPILED\n"
ALIAS_MAGIC = b"DEEPYTORCH-PRECOMPILED-ALIAS\n"
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))
# this pack's module-name prefix (ComfyUI names a custom-node pack by its folder, or by its path on newer versions):
# artifacts record it, a process with another install path maps it back while loading
PACK = __name__.rpartition(".engine.")[0]

# process-wide counts (tests and the start-up log read deltas of them)
STATS = {"loads": 0, "load_s": 0.0, "bakes": 0, "bake_s": 0.0, "ignored": 0, "calls": 0, "shares": 0,
         "share_s": 0.0, "aliases": 0}


def supported():
    """(bool, reason): whether this torch has the route."""
    if not hasattr(torch.compiler, "load_compiled_function"):
        return False, f"torch {torch.__version__} has no torch.compiler.load_compiled_function"
    if not hasattr(torch.compile(lambda: None), "aot_compile"):
        return False, f"torch {torch.__version__} has no torch.compile(...).aot_compile"
    return True, "aot_compile + load_compiled_function"


def enabled():
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("1", "true", "yes", "on", ""):
        _once("env", "%s=%r is not understood (0 or 1); precompiled regions stay on", ENV, value)
    return True


_logged = set()


def _once(key, msg, *args, level="info"):
    if key not in _logged:
        _logged.add(key)
        getattr(log, level)(msg, *args)


def store_dir():
    """<compile cache>/precompiled, or None (no cache directory: the route needs one to be worth anything)."""
    root = compile_cache.directory()
    return os.path.join(root, "precompiled") if root else None


# -- key ------------------------------------------------------------------------------------------------------------
def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _file_hash(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def engine_hash():
    files = sorted(glob.glob(os.path.join(ENGINE_DIR, "**", "*.py"), recursive=True))
    return _digest([(os.path.relpath(f, ENGINE_DIR), _file_hash(f)) for f in files])[:16]


@functools.lru_cache(maxsize=None)
def pack_version():
    try:
        with open(os.path.join(os.path.dirname(ENGINE_DIR), "pyproject.toml")) as f:
            found = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return found.group(1) if found else "?"
    except OSError:
        return "?"


@functools.lru_cache(maxsize=None)
def system():
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    cuda=torch.version.cuda)
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    try:   # CPU kernels are built for this CPU's instruction set
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
        info["cpu_flags"] = hashlib.sha256(flags.group(1).encode()).hexdigest()[:12] if flags else None
    except OSError:
        info["cpu"] = platform.processor()
    return info


def _normal(module_name):
    """A module name with this pack's install-dependent prefix replaced."""
    if PACK and module_name and (module_name == PACK or module_name.startswith(PACK + ".")):
        return "<pack>" + module_name[len(PACK):]
    return module_name


def _class_name(cls):
    return f"{_normal(cls.__module__)}:{cls.__qualname__}"


def _source_files(classes):
    files = {}
    for cls in classes:
        for base in cls.__mro__:
            module = sys.modules.get(base.__module__)
            path = getattr(module, "__file__", None)
            if path and not path.startswith(os.path.dirname(torch.__file__)) and base.__module__ != "builtins":
                files[_normal(base.__module__)] = _file_hash(path)
    return files


@functools.lru_cache(maxsize=None)
def _class_key(cls, shapes, tree):
    """Key part of a block class + its parameter shapes + the classes of its module tree."""
    classes = [cls] + [c for _, c in tree]
    return {"class": _class_name(cls), "parameters": shapes,
            "tree": [(name, _class_name(c)) for name, c in tree], "sources": _source_files(classes)}


def module_tree(module):
    return tuple((name, type(m)) for name, m in module.named_modules())


def _stable(value):
    """A value for the key without addresses: graph-pass objects by their uuid()."""
    if isinstance(value, dict):
        return sorted((str(k), _stable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    uid = getattr(value, "uuid", None)
    return f"{type(value).__qualname__}:{uid() if callable(uid) else '?'}"


def token(value):
    """A name for a function or class found in the inputs (its identity guard cannot be saved), or None."""
    if isinstance(value, types.MethodType):
        inner = token(value.__func__)
        return inner and f"method {inner} of {_class_name(type(value.__self__))}"
    if isinstance(value, types.FunctionType):
        if value.__closure__:   # a closure's captured values are part of what was traced: no name covers them
            return None
        return f"function {_normal(value.__module__)}:{value.__qualname__}"
    if isinstance(value, types.BuiltinFunctionType):
        return f"builtin {getattr(value, '__module__', None)}:{value.__qualname__}"
    if isinstance(value, type):
        return f"class {_class_name(value)}"
    return None


def signature(args, kwargs, dynamic, strip=False):
    """The input signature for the key: tensors by dtype / device / shape (no sizes where `dynamic`, or in dims
    marked dynamic) and their dynamic marks, containers by structure, functions by name, ints / strings / bools by
    value (ComfyUI's block names and indices in transformer_options: each needs its own graph, and its own file),
    floats by type."""
    def sig(v):
        if isinstance(v, torch.Tensor):
            # weak marks: set aside for a `strip` artifact (see _without_weak_marks)
            weak = set() if strip else getattr(v, "_dynamo_weak_dynamic_indices", set())
            dims = weak | getattr(v, "_dynamo_dynamic_indices", set())
            shape = [v.dim()] if dynamic else [None if i in dims else s for i, s in enumerate(v.shape)]
            return ["T", str(v.dtype), v.device.type, shape, v.requires_grad, sorted(dims)]
        if isinstance(v, dict):
            return ["D", [[str(k), sig(x)] for k, x in v.items()]]
        if isinstance(v, (list, tuple)):
            return ["L" if isinstance(v, list) else "U", [sig(x) for x in v]]
        if v is None or isinstance(v, (bool, int, str)):   # dynamo guards on their values: so does the key
            return [type(v).__name__, v]
        if isinstance(v, float):                           # not on a float's (it traces floats symbolically)
            return "float"
        name = token(v)
        return name or _class_name(type(v))
    return [sig(a) for a in args], [[k, sig(v)] for k, v in kwargs.items()]


# -- guards ---------------------------------------------------------------------------------------------------------
class _GuardFilter:
    """Which guards an artifact keeps. Dropped: what torch cannot serialize, and what the key already covers
    (globals, class structure, the module tree's classes). Identity guards on functions in the inputs become
    call-time checks by name; any other identity guard makes the region unfit for saving (`unsafe`)."""

    def __init__(self):
        from torch._dynamo.guards import CheckFunctionManager
        self.unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
        self.hooks_unguarded = bool(getattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False))
        self.checks = {}
        self.unsafe = []

    def __call__(self, entries):
        return [self.keep(g) for g in entries]

    def keep(self, g):
        if getattr(g.orig_guard, "user_stack", None) is not None:
            # each guard's user-code stack, read only for failure messages: saved, the largest part of a guard's
            # bytes (unpickling guards is a third of a warm start); the reasons keep the guard's code
            g.orig_guard.user_stack = None
        kinds = {g.guard_type, *(g.derived_guard_types or ())}
        if g.is_global:                                  # globals: the key's source hashes and torch version
            return False
        if g.guard_type == "EMPTY_NN_MODULE_HOOKS_DICT" and self.hooks_unguarded:
            # torch checks nothing for these (skip_nnmodule_hook_guards): saved, they only cost load time (43% of a
            # SpatialTransformer's 3382 guards; unpickling and rebuilding guards is most of a warm start)
            return False
        if "type(" in g.name or "__mro__" in g.name:     # class structure: the key's class names + source hashes
            return False
        type_only = kinds <= {"TYPE_MATCH", "BUILTIN_MATCH"}
        nested = type_only and g.has_value and type(g.value).__qualname__ != type(g.value).__name__
        if not (kinds & self.unsupported) and not nested:
            return True
        if g.name.startswith("self") and type_only:
            return False        # the module tree's classes: in the key
        if type_only:
            self.checks[g.name] = "type " + _class_name(type(g.value))
            return False
        name = token(g.value) if g.has_value else None
        if name is None:
            self.unsafe.append(f"{g.name} ({g.guard_type})")
        else:
            self.checks[g.name] = name
        return False


class _Unsafe(Exception):
    """An artifact would depend on an input's identity, which no saved guard can check."""


def _cannot_precompile(exc):
    """Errors that say this region cannot take the precompiled route (it then takes torch.compile's own path);
    anything else is the call's own error."""
    dyn = torch._dynamo.exc
    kinds = tuple(k for k in (getattr(dyn, "Unsupported", None), getattr(dyn, "PackageError", None),
                              getattr(dyn, "RestartAnalysis", None)) if k is not None)
    import pickle
    return isinstance(exc, kinds + (_Unsafe, TypeError, pickle.PicklingError, NotImplementedError))


def _aot_compile(compiled, module, args, kwargs, attempts=4):
    """compiled.aot_compile, restarted where dynamo asks to restart its analysis (with dynamic shapes it may, e.g.
    to turn a float into a tensor): torch.compile's own frame loop does that, aot_compile leaves it to the caller."""
    restart = getattr(torch._dynamo.exc, "RestartAnalysis", ())
    for attempt in range(attempts):
        try:
            return compiled.aot_compile(((module, *args), kwargs))
        except restart:
            if attempt == attempts - 1:
                raise


def _accessor(expr):
    """A reader for a guard's source (`name`, `.attr`, `[literal]` only: guards name their inputs that way)."""
    import ast
    steps = []
    node = ast.parse(expr, mode="eval").body
    while not isinstance(node, ast.Name):
        if isinstance(node, ast.Attribute):
            steps.append((getattr, node.attr))
            node = node.value
        elif isinstance(node, ast.Subscript):
            # a literal key: a name, an index, or a tuple (ComfyUI keys attention patches by block id, ('middle', 0))
            steps.append((lambda obj, key: obj[key], ast.literal_eval(node.slice)))
            node = node.value
        else:
            raise ValueError(f"unsupported guard source {expr!r}")
    root = node.id

    def read(f_locals):
        value = f_locals[root]
        for step, arg in reversed(steps):
            value = step(value, arg)
        return value
    return read


def _value_token(expr_value, expected):
    if expected.startswith("type "):
        return "type " + _class_name(type(expr_value))
    return token(expr_value)


_OTHER_MARKS = ("_dynamo_dynamic_indices", "_dynamo_static_indices", "_dynamo_unbacked_indices",
                "_dynamo_strict_unbacked_indices")


def _no_duck_sizing(dynamic):
    """A dynamic artifact makes every size symbolic at once (torch.compile's own path makes only the sizes that
    changed dynamic): with duck sizing a batch of 2 would share a symbol with FLUX's constant 2s in `pe` and be
    specialised to 2 with them. Scoped to this compile."""
    config = getattr(getattr(torch.fx, "experimental", None), "_config", None)
    if not dynamic or config is None or not hasattr(config, "use_duck_shape"):
        return contextlib.nullcontext()
    return config.patch(use_duck_shape=False)


def _has_weak_marks(args, kwargs):
    found = []
    with _without_weak_marks(args, kwargs) as held:
        found.extend(held)
    return bool(found)


@contextlib.contextmanager
def _without_weak_marks(args, kwargs, active=True):
    """torch records the inputs' weak dynamic marks (maybe_mark_dynamic: the one regional puts on ComfyUI's noise
    schedule) as absent in a saved artifact whose graph reads the marked tensor (SDXL's SpatialTransformer copies
    every option), so a call carrying them never matches its own artifact again. For such a class the artifact is
    dynamic (every size is, the marked ones included) and compiled, checked and called with the marks set aside; they
    are put back after (torch.compile's own path, used by other regions, still wants them)."""
    held = []

    def visit(v, depth):
        if isinstance(v, torch.Tensor):
            marks = getattr(v, "_dynamo_weak_dynamic_indices", None)
            if marks:
                # torch's guard also checks that a tensor was marked at all: that flag goes too, unless another
                # kind of mark (dynamic, static, unbacked) is on the tensor
                flag = getattr(v, "_has_dynamo_dim_marking", None) is not None and not any(
                    getattr(v, a, None) for a in _OTHER_MARKS)
                held.append((v, marks, flag))
                del v._dynamo_weak_dynamic_indices
                if flag:
                    flag = v._has_dynamo_dim_marking
                    del v._has_dynamo_dim_marking
                    held[-1] = (v, marks, flag)
        elif depth < 4 and isinstance(v, dict):
            for x in v.values():
                visit(x, depth + 1)
        elif depth < 4 and isinstance(v, (list, tuple)):
            for x in v:
                visit(x, depth + 1)
    if active:
        visit(args, 0)
        visit(kwargs, 0)
    try:
        yield list(held)
    finally:
        for t, marks, flag in held:
            t._dynamo_weak_dynamic_indices = marks
            if flag is not False:
                t._has_dynamo_dim_marking = flag


# -- blocks that differ only in literal options (SDXL's block ids) share an artifact ------------------------------
# ComfyUI's SD/SDXL transformer blocks read their block id (transformer_options["block"], e.g. ("input", 7)) to look
# up attention patches: dynamo guards on its value, so every block of a class needed an artifact of its own (SDXL:
# 11 SpatialTransformers, 6 of them 10 transformer blocks deep), although with no patch for them their graphs are
# the same. A call that misses only because such literal items differ from an artifact's shares that artifact when
#   - the artifact's guards pass with its own values put in for the differing items the trace guards on,
#   - dynamo traces the call, and the same call with those values put in, to the same program: graph, bytecode and
#     every guard but those on the items (so nothing the program computes depends on their values), and
#   - that program never loads the items at run time (it would read the values put in).
# It is then called with the artifact's values put in (restored after). Verified per value (another block id is
# traced again) and written to the store as an alias, so a new process loads the artifact once for all its blocks.
def _is_literal(v, depth=0):
    if v is None or isinstance(v, (bool, int, str)):
        return True
    return depth < 2 and isinstance(v, tuple) and all(_is_literal(x, depth + 1) for x in v)


def _literal_items(args, kwargs):
    """{(where, key): value}: the literal items (str / int / bool / None / tuples of them) of the dict inputs; where
    is an argument's position or a keyword's name."""
    out = {}
    for where, v in [*enumerate(args), *kwargs.items()]:
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and _is_literal(x):
                    out[(where, k)] = x
    return out


def _same(a, b):
    return type(a) is type(b) and a == b


@contextlib.contextmanager
def _substituted(args, kwargs, values):
    """The dict inputs' items set to `values` ({(where, key): value}) for the duration, put back after."""
    saved = []
    try:
        for (where, key), value in values.items():
            holder = kwargs[where] if isinstance(where, str) else args[where]
            saved.append((holder, key, holder[key]))
            holder[key] = value
        yield
    finally:
        for holder, key, value in reversed(saved):
            holder[key] = value


def _pack_literals(values):
    return [[where, key, repr(v)] for (where, key), v in values.items()]


def _unpack_literals(items):
    import ast
    out = {}
    for where, key, text in items:
        value = ast.literal_eval(text)
        if not _is_literal(value) or repr(value) != text:
            raise ValueError(f"not a literal option value: {text[:80]}")
        out[(where, key)] = value
    return out


def _code_text(code):
    """A code object's instructions and those of the code objects in its constants, with the names dynamo numbers
    per compile (the graph's global, resume functions) made neutral."""
    import dis
    parts = []

    def visit(c):
        parts.append(dis.Bytecode(c).dis())
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                visit(k)
    visit(code)
    return re.sub(r"__(compiled_fn|resume_at)_[0-9a-zA-Z_]+", r"__\1", "\n".join(parts))


def _code_strings(code):
    """The strings a code object (and the code objects in its constants) loads as constants: the keys it reads or
    writes at run time (dynamo's code keeps the traced function's constants, used or not: only loads count)."""
    import dis
    found = set()

    def add(v):
        if isinstance(v, str):
            found.add(v)
        elif isinstance(v, (tuple, frozenset)):
            for x in v:
                add(x)

    def visit(c):
        for ins in dis.get_instructions(c):
            if ins.opname in ("LOAD_CONST", "RETURN_CONST"):
                add(ins.argval)
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                visit(k)
    visit(code)
    return found


def _guard_lines(tree, skip):
    """The guard tree's lines without their comments (source lines) and object ids, less those naming `skip`."""
    marks = [f"[{k!r}]" for k in skip]
    lines = []
    for line in tree:
        if any(m in line for m in marks):
            continue
        line = line.split("  #")[0].rstrip()
        lines.append(re.sub(r"\b\d{8,}\b", "<id>", line))
    return lines


def _ignored(path, e):
    STATS["ignored"] += 1
    log.info("precompiled: ignored %s (%s: %s)", os.path.basename(path), type(e).__name__,
             " ".join(str(e).split())[:300])


class _Entry:
    """One loaded or baked artifact."""

    def __init__(self, fn, checks, path, dynamic, strip=False, literals=None):
        self.fn = fn
        self.path = path
        self.dynamic = dynamic
        self.strip = strip    # compiled with the inputs' weak dynamic marks set aside: checked and called so
        self.checks = [(_accessor(expr), expr, expected) for expr, expected in checks.items()]
        self.literals = literals  # the literal option items it was compiled with (see _literal_items), if known
        self.shares = []          # [(values of a call that shares it, this artifact's values put in for it)]

    def _put_in(self, args, kwargs):
        """This artifact's values for a call that shares it (see _Entry.shares), else {}."""
        for values, ours in self.shares:
            try:
                if all(_same((kwargs[w] if isinstance(w, str) else args[w])[k], v) for (w, k), v in values.items()):
                    return ours
            except (KeyError, IndexError, TypeError):
                continue
        return {}

    def matches(self, module, args, kwargs):
        with _without_weak_marks(args, kwargs, self.strip), _substituted(args, kwargs, self._put_in(args, kwargs)):
            return self._matches(module, args, kwargs)

    def call(self, module, args, kwargs):
        with _without_weak_marks(args, kwargs, self.strip), _substituted(args, kwargs, self._put_in(args, kwargs)):
            return self.fn.fn(module, *args, **kwargs)

    def _matches(self, module, args, kwargs):
        if not self.fn.guard_check(module, *args, **kwargs):
            return False
        if self.checks:
            f_locals = self.fn.prepare_f_locals(module, *args, **kwargs)
            for read, _, expected in self.checks:
                try:
                    value = read(f_locals)
                except Exception:
                    return False
                if _value_token(value, expected) != expected:
                    return False
        return True

    def why_not(self, module, args, kwargs):
        try:
            with _without_weak_marks(args, kwargs, self.strip), _substituted(args, kwargs,
                                                                              self._put_in(args, kwargs)):
                return self._why_not(module, args, kwargs)
        except Exception as e:   # pragma: no cover - torch internals moved
            return f"guards failed ({type(e).__name__})"

    def _why_not(self, module, args, kwargs):
        try:
            f_locals = self.fn.prepare_f_locals(module, *args, **kwargs)
            parts = self.fn._artifacts.guard_manager.check_verbose(f_locals).verbose_code_parts
            reason = "; ".join(map(str, parts)) if isinstance(parts, (list, tuple)) else str(parts)
        except Exception as e:   # pragma: no cover - torch internals moved
            reason = f"guards failed ({type(e).__name__})"
        return " ".join(reason.split())[:400]


@contextlib.contextmanager
def _pack_aliases(baked_pack):
    """While loading: this pack's modules also under the names the baking process gave them."""
    added = []
    if baked_pack and PACK and baked_pack != PACK:
        for name in list(sys.modules):
            if name == PACK or name.startswith(PACK + "."):
                alias = baked_pack + name[len(PACK):]
                if alias not in sys.modules:
                    sys.modules[alias] = sys.modules[name]
                    added.append(alias)
    try:
        yield
    finally:
        for alias in added:
            sys.modules.pop(alias, None)


def _traced_sources(fn):
    out = {}
    for src in getattr(fn._artifacts.source_info, "inlined_sources", ()):
        module = sys.modules.get(src.module)
        path = getattr(module, "__file__", None)
        out[_normal(src.module)] = _file_hash(path) if path else None
    return out


def _current_module(name):
    if name.startswith("<pack>"):
        name = PACK + name[len("<pack>"):]
    return sys.modules.get(name)


def _stale_sources(recorded):
    for name, digest in recorded.items():
        module = _current_module(name)
        path = getattr(module, "__file__", None)
        if module is None or path is None or _file_hash(path) != digest:
            return name
    return None


# -- the region's compiled forward ----------------------------------------------------------------------------------
class PrecompiledForward:
    """A block class's compiled forward through precompiled artifacts, with `dynamo` (today's torch.compile function
    for the class) as the fall-back. Called as forward(module, *args, **kwargs)."""

    def __init__(self, cls, shapes, options, compile_kwargs, dynamo, directory, context):
        self.cls = cls
        self.name = cls.__name__
        self.shapes = shapes
        self.options = options
        self.compile_kwargs = compile_kwargs    # torch.compile kwargs (backend, options, ...) without fullgraph/dynamic
        self.dynamo = dynamo
        self.directory = directory
        self.context = context
        self.entries = []
        # the entry each block matched last: blocks of one class and shapes that need artifacts of their own (SDXL's
        # SpatialTransformers, keyed by block id) are called in turn, and trying the entries in list order would
        # check every other block's guards first (measured: 2.5 failed checks per call, 19 ms a step on sdxl-narrow)
        self.last = weakref.WeakKeyDictionary()
        self.loaded_paths = set()
        self.broken = None                      # why this class takes the dynamo path from now on
        self.unsaved = {}                       # {dynamic or 'stripped': why}: artifacts of that kind are not saved
        self.strip = False                      # this class bakes 'stripped' artifacts (see _without_weak_marks)
        self.deepytorch_graph_calls = getattr(dynamo, "deepytorch_graph_calls", None) or [0]
        self.deepytorch_code = getattr(dynamo, "deepytorch_code", None)
        self.deepytorch_reasons = []            # why a new artifact was needed (a "recompile")
        from .backends.inductor import private_copy
        self.forward = private_copy(cls.forward)

    def __call__(self, module, *args, **kwargs):
        if self.broken is None:
            entry = self._match(module, args, kwargs) or self._miss(module, args, kwargs)
            if entry is not None:
                self.last[module] = entry
                self.deepytorch_graph_calls[0] += 1
                STATS["calls"] += 1
                return entry.call(module, args, kwargs)
        return self.dynamo(module, *args, **kwargs)

    def _match(self, module, args, kwargs):
        last = self.last.get(module)
        if last is not None and last.matches(module, args, kwargs):
            return last
        return next((e for e in self.entries if e is not last and e.matches(module, args, kwargs)), None)

    # -- a call no entry matches: load one from the store, else bake one ---------------------------------------
    def _miss(self, module, args, kwargs):
        had = bool(self.entries)
        reason = (self.last.get(module) or self.entries[0]).why_not(module, args, kwargs) if had else None
        static = self._key(module, args, kwargs, False)
        dynamic = self._key(module, args, kwargs, True) if self.options.dynamic != "false" else None
        # a class whose marked inputs torch cannot save faithfully (see _without_weak_marks): its 'stripped' artifacts
        stripped = self._key(module, args, kwargs, True, strip=True) \
            if dynamic is not None and _has_weak_marks(args, kwargs) else None
        for key in (static, dynamic, stripped):
            entry = key and self._load(key, module, args, kwargs)
            if entry is not None:
                self._note(had, reason, f"loaded {os.path.basename(entry.path)}")
                return entry
        entry = self._share(module, args, kwargs) if had else None
        if entry is not None:
            self._note(had, reason, f"shares {os.path.basename(entry.path)}")
            return entry
        # dynamic 'auto': static at first, dynamic once a class meets a second signature (torch's own rule)
        bake_dynamic = dynamic is not None and (self.options.dynamic == "true" or had)
        if stripped is not None and "stripped" not in self.unsaved and (self.strip or bake_dynamic in self.unsaved):
            entry = self._bake(stripped, module, args, kwargs, True, strip=True)
        elif bake_dynamic in self.unsaved:
            # an artifact of this kind could not be saved (see _save): torch.compile's own path serves such calls,
            # where inductor's caches make the next process faster than a full precompile would
            return None
        else:
            entry = self._bake(dynamic if bake_dynamic else static, module, args, kwargs, bake_dynamic)
            if entry is not None and bake_dynamic in self.unsaved and stripped is not None:
                self.strip = True   # what a new process can load: the dynamic artifact with the marks set aside
                entry = self._bake(stripped, module, args, kwargs, True, strip=True) or entry
        if entry is not None:
            self._note(had, reason, "compiled" + (" with dynamic shapes" if entry.dynamic else ""))
        return entry

    def _note(self, had, reason, how):
        if had:   # a further artifact for this class in this process: counted like dynamo's recompile
            self.deepytorch_reasons.append(f"{how}: {reason}")

    def _key(self, module, args, kwargs, dynamic, strip=False):
        parts = {"format": FORMAT, "system": system(), "pack": pack_version(), "engine": engine_hash(),
                 "block": _class_key(self.cls, self.shapes, module_tree(module)), "options": str(self.options),
                 "context": self.context, "compile": _stable(self.compile_kwargs),
                 "inputs": signature(args, kwargs, dynamic, strip), "dynamic": dynamic,
                 # artifacts baked without hook guards (see _GuardFilter) are for processes that check none either
                 "hook_guards": not getattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False)}
        if strip:
            parts["strip"] = True
        return f"{self.name}-{_digest(parts)[:24]}{'-dyn' if dynamic else ''}{'s' if strip else ''}"

    def _load(self, key, module, args, kwargs):
        d = glob.escape(self.directory)
        for path in sorted(glob.glob(os.path.join(d, key + ".*.bin")) + glob.glob(os.path.join(d, key + ".*.alias"))):
            if path in self.loaded_paths:
                continue
            self.loaded_paths.add(path)
            if path.endswith(".alias"):
                entry = self._alias(path, key)
                if entry is not None and entry.matches(module, args, kwargs):
                    return entry
                continue
            entry = self._read(path, key)
            if entry is None:
                continue
            if not entry.matches(module, args, kwargs):
                self.entries.append(entry)   # another signature's (same key): kept for later calls
                log.log.debug("DeepyTorch: precompiled: %s does not match this call: %s", os.path.basename(path),
                              entry.why_not(module, args, kwargs))
                continue
            self.entries.insert(0, entry)
            return entry
        return None

    def _read(self, path, key=None):
        """The artifact in `path` (written for `key`, if given), or None with the reason logged."""
        t0 = time.perf_counter()
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data.startswith(MAGIC):
                raise ValueError("not a DeepyTorch precompiled artifact")
            header, _, blob = data[len(MAGIC):].partition(b"\n")
            meta = json.loads(header)
            if meta.get("format") != FORMAT or (key is not None and meta.get("key") != key):
                raise ValueError("written for another key or format")
            if len(blob) != meta.get("size"):
                raise ValueError(f"truncated ({len(blob)} of {meta.get('size')} bytes)")
            stale = _stale_sources(meta.get("sources", {}))
            if stale:
                raise ValueError(f"the source of {stale} changed since it was compiled")
            literals = _unpack_literals(meta["literals"]) if meta.get("literals") is not None else None
            with _pack_aliases(meta.get("pack_module")):
                import io
                fn = torch.compiler.load_compiled_function(io.BytesIO(blob))
        except Exception as e:   # missing, foreign, corrupt, truncated: ignored, the region compiles
            return _ignored(path, e)
        STATS["loads"] += 1
        STATS["load_s"] += time.perf_counter() - t0
        return _Entry(fn, meta.get("checks", {}), path, meta.get("dynamic", False),
                      meta.get("strip_weak_marks", False), literals)

    def _alias(self, path, key):
        """The artifact an alias file names, shared by this call (see _literal_items), or None."""
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data.startswith(ALIAS_MAGIC):
                raise ValueError("not a DeepyTorch alias")
            meta = json.loads(data[len(ALIAS_MAGIC):])
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError("written for another key or format")
            values, ours = _unpack_literals(meta["values"]), _unpack_literals(meta["artifact_values"])
            target = os.path.join(self.directory, os.path.basename(meta["artifact"]))
        except Exception as e:
            return _ignored(path, e)
        entry = next((e for e in self.entries if e.path == target), None)
        if entry is None:
            if target in self.loaded_paths:
                return None   # read before and ignored
            self.loaded_paths.add(target)
            entry = self._read(target)
            if entry is None:
                return None
            self.entries.append(entry)
        STATS["aliases"] += 1
        entry.shares.append((values, ours))
        return entry

    def _bake(self, key, module, args, kwargs, dynamic, strip=False):
        t0 = time.perf_counter()
        literals = _literal_items(args, kwargs)   # as the call brings them (the block may change its options)
        filt = _GuardFilter()
        try:
            options = dict(self.compile_kwargs.get("options") or {})
            options["guard_filter_fn"] = filt
            kw = {k: v for k, v in self.compile_kwargs.items() if k != "options"}
            compiled = torch.compile(self.forward, fullgraph=True, options=options, **kw,
                                     dynamic=True if dynamic else False if self.options.dynamic == "false" else None)
            # the region's own forward (installed on the instance by the caller) stays out of the saved guard state
            installed = module.__dict__.pop("forward", None)
            try:
                with _without_weak_marks(args, kwargs, strip), _no_duck_sizing(dynamic):
                    fn = _aot_compile(compiled, module, args, kwargs)
            finally:
                if installed is not None:
                    module.__dict__["forward"] = installed
            if filt.unsafe:
                raise _Unsafe("inputs whose identity the artifact would need: " + ", ".join(filt.unsafe[:3]))
            path = os.path.join(self.directory, f"{key}.{uuid.uuid4().hex[:12]}.bin")
            try:
                entry = _Entry(fn, filt.checks, path, dynamic, strip, literals)
            except ValueError as e:   # a call-time check on an input this cannot read back
                raise _Unsafe(str(e)) from e
        except Exception as e:
            if not _cannot_precompile(e):   # the call's own error (e.g. a user's wrong input): routed by the caller
                raise
            self.broken = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            log.info("precompiled: %s takes torch.compile's own path (cannot be precompiled: %s)", self.name,
                     self.broken)
            return None
        STATS["bakes"] += 1
        STATS["bake_s"] += time.perf_counter() - t0
        self._save(fn, key, path, filt.checks, dynamic, strip, module, args, kwargs, literals)
        self.loaded_paths.add(path)
        self.entries.insert(0, entry)
        return entry

    def _save(self, fn, key, path, checks, dynamic, strip, module, args, kwargs, literals=None):
        """Saves the artifact, if a copy read back from its bytes matches the call it was compiled for (torch does
        not save every guard faithfully: with dynamic shapes it records a tensor's dynamic mark as absent, and
        ComfyUI's noise schedule carries one): a file that could never match again is not written."""
        kind = "stripped" if strip else dynamic
        if self.unsaved.get(kind):
            return
        try:
            from torch._dynamo.aot_compile import AOTCompiledFunction
            blob = AOTCompiledFunction.serialize(fn).serialized_data
            reread = _Entry(AOTCompiledFunction.deserialize(blob), checks, path, dynamic, strip)
            if not reread.matches(module, args, kwargs):
                self.unsaved[kind] = reread.why_not(module, args, kwargs)
                log.info("precompiled: %s: a %s artifact read back from its bytes does not match the call it was "
                         "compiled for (%s): not saved; further such calls take torch.compile's own path",
                         self.name, "dynamic" if dynamic else "static", self.unsaved[kind][:200])
                return
            meta = {"format": FORMAT, "key": key, "size": len(blob), "dynamic": dynamic, "strip_weak_marks": strip,
                    "checks": checks, "literals": _pack_literals(literals) if literals is not None else None,
                    "sources": _traced_sources(fn), "pack_module": PACK, "block": self.name,
                    "torch": torch.__version__, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
            self._write(path, MAGIC + json.dumps(meta).encode() + b"\n" + blob)
        except Exception as e:   # read-only or full store: this process keeps the artifact in memory
            self._unsaved(e)

    def _write(self, path, data):
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".baking-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)   # atomic: a reader sees the whole file or none

    def _unsaved(self, e):
        _once(("save", self.directory), "precompiled: could not save to %s (%s: %s); regions are compiled in "
              "memory only", self.directory, type(e).__name__, " ".join(str(e).split())[:200], level="warning")


    # -- a call that differs from an artifact's only in literal options: share it (see _literal_items) --------------
    def _share(self, module, args, kwargs):
        if not hasattr(torch._dynamo.convert_frame, "fullgraph_capture"):
            return None
        mine = _literal_items(args, kwargs)
        last = self.last.get(module)
        for entry in ([last] if last is not None else []) + [e for e in self.entries if e is not last]:
            if entry.literals is None:
                continue
            if set(entry.literals) != set(mine):
                continue
            differ = {k for k in mine if not _same(mine[k], entry.literals[k])}
            if differ:
                shared = self._verify(entry, module, args, kwargs, differ)
                if shared is not None:
                    return shared
        return None

    def _verify(self, entry, module, args, kwargs, differ):
        t0 = time.perf_counter()
        try:
            # first the artifact's own guards with its values put in (cheap): most misses are other shapes
            values = {k: v for k, v in _literal_items(args, kwargs).items() if k in differ}
            entry.shares.append((values, {k: entry.literals[k] for k in differ}))
            fits = entry.matches(module, args, kwargs)
            entry.shares.pop()
            if not fits:
                return None
            real = self._capture(entry, module, args, kwargs)
            # the items the trace guards on (the others may differ: nothing in the program depends on them)
            guarded = {k for k in differ if any(f"[{k[1]!r}]" in line for line in real[2])}
            ours = {k: entry.literals[k] for k in guarded}
            if not ours or _code_strings(real[3]) & {k[1] for k in ours}:
                return None   # nothing to put in, or the program reads those items back at run time
            with _substituted(args, kwargs, ours):
                theirs = self._capture(entry, module, args, kwargs)
            skip = {k[1] for k in ours}
            if real[:2] != theirs[:2] or _guard_lines(real[2], skip) != _guard_lines(theirs[2], skip):
                return None
            values = {k: v for k, v in values.items() if k in ours}
            entry.shares.append((values, ours))
            if not entry.matches(module, args, kwargs):
                entry.shares.pop()
                return None
        except Exception as e:   # torch internals this needs moved, or the trace failed: compiled as before
            log.log.debug("DeepyTorch: precompiled: %s: no shared artifact (%s: %s)", self.name, type(e).__name__,
                          " ".join(str(e).split())[:200])
            return None
        finally:
            STATS["share_s"] += time.perf_counter() - t0
        STATS["shares"] += 1
        self._save_alias(entry, module, args, kwargs, values, ours)
        return entry

    def _capture(self, entry, module, args, kwargs):
        """dynamo's trace of this call, compiled as `entry` was, without compiling it: (graph code, bytecode text,
        the guard tree's lines, the bytecode)."""
        from torch._dynamo import convert_frame
        from torch._dynamo.eval_frame import set_enable_dynamic
        from torch._dynamo.hooks import Hooks
        from torch._dynamo.utils import dynamo_timed, get_metrics_context
        filt = _GuardFilter()
        installed = module.__dict__.pop("forward", None)
        try:
            with _without_weak_marks(args, kwargs, entry.strip), _no_duck_sizing(entry.dynamic), \
                    get_metrics_context(), dynamo_timed("deepytorch_share_capture"), \
                    set_enable_dynamic(bool(entry.dynamic)):
                out = convert_frame.fullgraph_capture(self.forward, (module, *args), kwargs)
                graph = out.graph_capture_output
                check = graph.build_guards(self.forward.__code__, hooks=Hooks(guard_filter_fn=filt), save=False)
        finally:
            if installed is not None:
                module.__dict__["forward"] = installed
        code = out.backend_input.graph_module.code if out.backend_input is not None else ""
        return code, _code_text(graph.bytecode), str(check.guard_manager).splitlines(), graph.bytecode

    def _save_alias(self, entry, module, args, kwargs, values, ours):
        key = self._key(module, args, kwargs, entry.dynamic, entry.strip)
        path = os.path.join(self.directory, f"{key}.{uuid.uuid4().hex[:12]}.alias")
        self.loaded_paths.add(path)
        if entry.path not in self.loaded_paths or not os.path.exists(entry.path):
            return   # the artifact itself was not saved: nothing a new process could share
        meta = {"format": FORMAT, "key": key, "artifact": os.path.basename(entry.path), "block": self.name,
                "values": _pack_literals(values), "artifact_values": _pack_literals(ours),
                "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            self._write(path, ALIAS_MAGIC + json.dumps(meta).encode())
        except Exception as e:
            self._unsaved(e)


def route(cls, shapes, options, compile_kwargs, dynamo, context=""):
    """The precompiled forward for a block class, or None where the route is off / unsupported (logged once).
    `compile_kwargs`: torch.compile's backend / options for this class (the caller caches one per class)."""
    if not enabled():
        _once("off", "precompiled regions are off (%s=0): regions are traced by dynamo in every process", ENV)
        return None
    ok, why = supported()
    if not ok:
        _once("unsupported", "precompiled regions unavailable (%s): regions are traced by dynamo in every process",
              why)
        return None
    directory = store_dir()
    if directory is None:
        return None
    return PrecompiledForward(cls, shapes, options, compile_kwargs, dynamo, directory, context)
