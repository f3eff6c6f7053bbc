"""Regional compilation: compile the repeated blocks of a model (identical blocks share compiled code), lazily on
first use, with a fall-back to eager for the whole model when the backend fails.

Nothing in the module tree is replaced: a compiled region is installed as the `forward` attribute of the block (by
the caller, e.g. as a ComfyUI object patch), so parameter names, state_dict keys and LoRA keys stay exactly as they
are, and weights patched in place are seen by the compiled code.
"""
import os
import re
import threading
import time
import types
import weakref

import torch

from . import log, precompiled

# Containers of repeated blocks, by architecture: FLUX, other DiTs / transformers.
REGION_CONTAINERS = ("double_blocks", "single_blocks", "blocks", "layers", "transformer_blocks", "joint_blocks")
# SD/SDXL UNet: ComfyUI iterates the layers of each TimestepEmbedSequential itself (forward_timestep_embed) instead
# of calling it, so the regions are those layers (ResBlock, SpatialTransformer, Downsample, Upsample).
UNET_CONTAINERS = ("input_blocks", "middle_block", "output_blocks")
SCOPES = ["regional", "whole"]


def find_regions(root, scope="regional"):
    """[(path, module)] to compile. `path` is relative to `root` ('' = root itself)."""
    if scope == "whole":
        return [("", root)]
    regions = []
    for attr in REGION_CONTAINERS:
        container = getattr(root, attr, None)
        if isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
            regions.extend((f"{attr}.{i}", block) for i, block in enumerate(container))
    for attr in UNET_CONTAINERS:
        container = getattr(root, attr, None)
        if not isinstance(container, torch.nn.Module):
            continue
        blocks = [(attr, container)] if attr == "middle_block" else \
            [(f"{attr}.{i}", b) for i, b in enumerate(container)]
        for path, block in blocks:
            # composite layers only: a lone conv is not worth a compiled region
            regions.extend((f"{path}.{name}", layer) for name, layer in block.named_children()
                           if any(True for _ in layer.children()))
    return regions or [("", root)]


def _natural(path):
    """Sort key: 'double_blocks.10' after 'double_blocks.9'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


_live = []   # weak references to every AcceleratedModel, newest last (for diagnostics and tests)


def live():
    """Every AcceleratedModel still alive, oldest first."""
    return [acc for acc in (r() for r in _live) if acc is not None]


def latest(label=None):
    """The most recently created AcceleratedModel still alive (optionally with this label), or None."""
    for ref in reversed(_live):
        acc = ref()
        if acc is not None and (label is None or acc.label == label):
            return acc
    return None


def _graphs_compiled():
    try:
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]
    except Exception:  # pragma: no cover - torch internals moved
        return 0


def _guard_failures():
    return getattr(getattr(torch._dynamo, "utils", None), "guard_failures", None)


def _reasons(fn, code):
    """(own, dynamo's): why this compiled function needed new code so far. `own`: a precompiled forward's reasons
    (no dynamo frame records them); dynamo's: its guard failures for the region's code."""
    failures = _guard_failures()
    return (list(getattr(fn, "deepytorch_reasons", None) or ()),
            list(failures.get(code, ())) if failures is not None else [])


def _inductor_counts():
    try:
        c = torch._dynamo.utils.counters["inductor"]
        return c["fxgraph_cache_hit"], c["fxgraph_cache_miss"]
    except Exception:  # pragma: no cover - torch internals moved
        return 0, 0


def _code_of(compiled, module):
    """The code object dynamo compiled for this region: the backend's private copy if it made one (see
    backends.inductor.private_copy), else the block class's forward."""
    return getattr(compiled, "deepytorch_code", None) or type(module).forward.__code__


def _summary(exc, lines=2, limit=400):
    """The first lines of an exception's message (dynamo puts the backend's own error on the second line)."""
    text = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(text[:lines])[:limit]


# Option-dict entries whose length changes with the run, not the image: ComfyUI's noise schedule (steps + 1 sigmas,
# in transformer_options). Blocks that copy every option (SD/SDXL's transformer block) make it a graph input, so
# each new step count would recompile them; its length is dynamic from the first compile instead.
RUN_LENGTH_KEYS = ("sample_sigmas",)


def _mark_run_length_dynamic(args, kwargs):
    for value in (*args, *kwargs.values()):
        if isinstance(value, dict):
            for key in RUN_LENGTH_KEYS:
                tensor = value.get(key)
                if isinstance(tensor, torch.Tensor) and tensor.dim() == 1:
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)


_EAGER = object()   # a region's compiled path returns this when the call must run eager instead

# Recompiles one compiled function may take before its regions run eager (a guard that keeps failing would otherwise
# recompile on every prompt, up to dynamo's own limit).
RECOMPILE_BUDGET_ENV = "DEEPYTORCH_RECOMPILE_BUDGET"
DEFAULT_RECOMPILE_BUDGET = 8


def recompile_budget():
    try:
        return max(0, int(os.environ.get(RECOMPILE_BUDGET_ENV, DEFAULT_RECOMPILE_BUDGET)))
    except ValueError:
        log.warning("%s=%r is not a number; using %d", RECOMPILE_BUDGET_ENV, os.environ.get(RECOMPILE_BUDGET_ENV),
                    DEFAULT_RECOMPILE_BUDGET)
        return DEFAULT_RECOMPILE_BUDGET


class FullGraphBreak(RuntimeError):
    """fullgraph is true and a region has a graph break: raised to the user (the workflow stops), never a fall-back."""


def _is_interrupt(exc):
    return "Interrupt" in type(exc).__name__


def _chain(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _out_of_memory(exc):
    """The out-of-memory error in `exc`'s chain (dynamo may wrap one), or None."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return next((e for e in _chain(exc) if isinstance(e, oom)), None)


# ComfyUI's partial loading (low-VRAM mode) marks each layer it leaves on the offload device with this attribute: such
# a layer's weight is cast (and its LoRA applied) on every call by ComfyUI's own code.
OFFLOADED_MARK = "prev_comfy_cast_weights"


def _castable_layers(module):
    """The layers of `module` ComfyUI's partial loading can leave on the offload device (its ops' layers)."""
    return [m for m in module.modules() if hasattr(m, "comfy_cast_weights")]


def _offloaded(layers):
    return any(OFFLOADED_MARK in m.__dict__ for m in layers)


def _graph_break(exc):
    unsupported = getattr(getattr(torch._dynamo, "exc", None), "Unsupported", None)
    return unsupported is not None and any(isinstance(e, unsupported) for e in _chain(exc))


class AcceleratedModel:
    """The compiled state of one model: created by the node, compiled on first use, shared by its regions."""

    def __init__(self, label, backend, options, scope="regional", call_context=None):
        self.label = label
        self.call_context = call_context   # optional context manager factory entered around every compiled call
        self.eager_context = None          # optional one entered around eager calls once the backend failed
        self.on_compiled = None            # optional callback once every region ran compiled
        self.backend = backend
        self.options = options
        self.scope = scope
        self.failed = None            # the exception that sent this model back to eager
        self.compiled = {}            # path -> compiled forward
        self.first_call_s = {}        # path -> seconds of the first compiled call (includes compile)
        self.recompiles = 0
        self.compiled_calls = 0       # calls in which a compiled graph ran (counted by the backend's graphs)
        self.skipped_calls = 0        # calls dynamo ran eagerly although compiled (recompile limit, skipped frame)
        self.recompile_budget = recompile_budget()
        self.over_budget = {}         # path -> the last recompile reason of a region that spent its budget
        self.offloaded = set()        # regions ComfyUI loaded partially (low-VRAM): they run eager while so
        self.offloaded_calls = 0
        self._layers = {}             # path -> the region's castable layers (to see a partial load per call)
        self._recompiles = {}         # path -> its recompiles (a region's first compile is none)
        self._skip_logged = set()
        self._seen_failures = {}      # code -> guard failures already logged
        self._lock = threading.Lock()
        self._regions = 0
        self._started = None
        self.start = None             # how this model started: 'precompiled', 'cache' or 'cold' (once all ran)
        self.start_counts = {}        # what its compile found: artifacts loaded / baked, dynamo graphs, cache hits
        _live[:] = [r for r in _live if r() is not None] + [weakref.ref(self)]

    def describe(self):
        """What a status page shows for this model (JSON-ready): how far it compiled and how it started."""
        return {"label": self.label, "backend": self.backend.name, "scope": self.scope, "regions": self._regions,
                "compiled": len(self.compiled), "recompiles": self.recompiles, "start": self.start,
                "offloaded": sorted(self.offloaded),
                "start_counts": dict(self.start_counts), "compiled_calls": self.compiled_calls,
                "failed": None if self.failed is None else f"{type(self.failed).__name__}: {_summary(self.failed)}"}

    # -- installation -------------------------------------------------------------------------------------------
    def region_forwards(self, root, parts=None):
        """{path: forward} to install on `root`'s blocks (or on the named `parts`); each compiles on first call."""
        regions = [(p, root.get_submodule(p)) for p in parts] if parts else find_regions(root, self.scope)
        self._regions = len(regions)
        self._layers = {path: _castable_layers(module) for path, module in regions}
        return {path: self._region_forward(path, module) for path, module in regions}

    def _region_forward(self, path, module):
        eager = types.MethodType(type(module).forward, module)   # the class's forward, never an installed one
        accelerated = self

        def forward(*args, **kwargs):
            if accelerated.failed is None:
                if accelerated.call_context is None:
                    out = run(*args, **kwargs)
                else:
                    with accelerated.call_context():
                        out = run(*args, **kwargs)
                if out is not _EAGER:
                    return out
            # a failed backend leaves plain eager ComfyUI, outside this model's call context (ComfyUI's attention)
            if accelerated.eager_context is None:
                return eager(*args, **kwargs)
            with accelerated.eager_context():
                return eager(*args, **kwargs)

        layers = self._layers[path]

        def run(*args, **kwargs):
            if path in accelerated.over_budget:
                return eager(*args, **kwargs)
            if _offloaded(layers):
                accelerated._ran_offloaded(path)
                return eager(*args, **kwargs)
            accelerated.offloaded.discard(path)
            fn = accelerated.compiled.get(path)
            first = fn is None
            if first:
                fn = accelerated._compile(path, module)
                if fn is None:
                    return _EAGER
                t0 = time.perf_counter()
            _mark_run_length_dynamic(args, kwargs)
            graphs = getattr(fn, "deepytorch_graph_calls", None)
            before = graphs[0] if graphs else 0
            try:
                out = fn(*args, **kwargs)
            except Exception as e:
                return accelerated._route_error(e, path, module, eager, args, kwargs)
            if graphs is None or graphs[0] > before:
                accelerated.compiled_calls += 1
            else:
                accelerated._ran_eager(path, module, fn)
            if first:
                accelerated._first_call_done(path, module, fn, time.perf_counter() - t0)
            else:
                accelerated._check_recompiles(path, module, fn)
            return out

        forward.deepytorch_region = (self, path)
        return forward

    # -- compile, progress, failure -----------------------------------------------------------------------------
    def _compile(self, path, module):
        with self._lock:
            if self._started is None:
                self._started = time.perf_counter()
                self._graphs_at_start = _graphs_compiled()
                self._stats_at_start = dict(precompiled.STATS)
                self._inductor_at_start = _inductor_counts()
                log.info("%s: compiling %d region(s) with backend '%s' (%s) on first use",
                         self.label, self._regions, self.backend.name, self.options)
            try:
                fn = self.backend.compile(module, self.options)
            except Exception as e:
                self._fail(e, path)
                return None
            self.compiled[path] = fn
            return fn

    def _first_call_done(self, path, module, fn, seconds):
        self.first_call_s[path] = seconds
        code = _code_of(fn, module)
        # what this first call added is the region's own first compile, not a recompile (regions sharing code that
        # dynamo guards apart, e.g. SDXL's SpatialTransformers by block id, each add one); earlier reasons belong to
        # other regions or models
        self._seen_failures[code] = tuple(map(len, _reasons(fn, code)))
        if seconds > 0.5:
            log.info("%s: region '%s' (%s) compiled in %.1f s", self.label, path or "<whole model>",
                     type(module).__name__, seconds)
        if len(self.first_call_s) == self._regions:
            self._started_how(time.perf_counter() - self._started)
            if self.on_compiled is not None and _graphs_compiled() > self._graphs_at_start:
                self.on_compiled()   # only when something new was compiled

    def _started_how(self, seconds):
        """One line per model: how it started (precompiled artifacts, caches, or a cold compile), counted."""
        stats = {k: precompiled.STATS[k] - self._stats_at_start[k] for k in precompiled.STATS}
        hits, misses = (now - then for now, then in zip(_inductor_counts(), self._inductor_at_start))
        graphs = _graphs_compiled() - self._graphs_at_start
        self.start_counts = {"artifacts_loaded": stats["loads"], "artifacts_compiled": stats["bakes"],
                             "artifacts_ignored": stats["ignored"], "dynamo_graphs": graphs,
                             # blocks running another block's artifact (literal options apart; see precompiled)
                             "artifacts_shared": stats["aliases"] + stats["shares"],
                             "inductor_cache_hits": hits, "inductor_cache_misses": misses, "seconds": seconds}
        if stats["loads"] and not stats["bakes"] and not graphs:
            self.start = "precompiled"
            log.info("%s: %d region(s) started from %d precompiled artifact(s)%s in %.1f s (no dynamo tracing)",
                     self.label, self._regions, stats["loads"],
                     f" ({stats['aliases']} shared by blocks with other ids)" if stats["aliases"] else "", seconds)
            return
        if not (stats["loads"] or stats["bakes"] or graphs or hits or misses):
            self.start = "cache"   # every region found code compiled earlier in this process
            log.info("%s: all %d region(s) ready in %.1f s (code compiled earlier in this process)", self.label,
                     self._regions, seconds)
            return
        self.start = "cache" if (hits or stats["loads"]) and not (misses or stats["bakes"]) else "cold"
        parts = []
        if stats["bakes"]:
            parts.append(f"{stats['bakes']} precompiled artifact(s) compiled and saved")
        if stats["loads"]:
            parts.append(f"{stats['loads']} loaded")
        if stats["shares"]:
            parts.append(f"{stats['shares']} shared by blocks with other ids ({stats['share_s']:.1f} s to verify)")
        if graphs:
            parts.append(f"{graphs} dynamo graph(s)")
        parts.append(f"inductor cache {hits} hit(s) / {misses} miss(es)")
        log.info("%s: all %d region(s) compiled, %.1f s since the first one (%s)", self.label, self._regions,
                 seconds, ", ".join(parts))

    def _check_recompiles(self, path, module, fn):
        code = _code_of(fn, module)
        seen = self._seen_failures.get(code)
        own, dynamo = _reasons(fn, code)
        if seen is None:
            return
        grew = len(own) > seen[0], len(dynamo) > seen[1]
        self._seen_failures[code] = (len(own), len(dynamo))   # (dynamo's records shrink when it is reset)
        if not any(grew):
            return
        latest = own[-1] if grew[0] else dynamo[-1]   # one call: one recompile, its latest reason
        self.recompiles += 1
        # dynamo starts each cached entry's reason with "<frame>/<entry>:" (one per shape seen so far)
        lines = [line.strip() for line in str(latest).strip().splitlines() if line.strip()]
        entries = [line for line in lines if re.match(r"^\d+/\d+:", line)] or lines[:1]
        reason = "; ".join(entries[:4])[:600] if entries else "unknown reason"
        log.info("%s: recompiled %s: %s", self.label, type(module).__name__, reason)
        spent = self._recompiles[path] = self._recompiles.get(path, 0) + 1
        if spent > self.recompile_budget:
            self._spend_budget(code, module, reason, spent)

    def _spend_budget(self, code, module, reason, spent):
        """Every region of this compiled function runs eager from now on (their image is unchanged)."""
        paths = [p for p, f in self.compiled.items() if _code_of(f, module) is code and p not in self.over_budget]
        for p in paths:
            self.over_budget[p] = reason
        log.warning("%s: region(s) %s (%s) recompiled %d times, past the recompile budget of %d (%s): they run eager "
                    "from now on. The guard that kept failing: %s", self.label, ", ".join(paths),
                    type(module).__name__, spent, self.recompile_budget,
                    RECOMPILE_BUDGET_ENV, reason)

    def _ran_eager(self, path, module, fn):
        """dynamo ran this call eagerly (it skips a frame past its recompile limit or one it cannot compile, and says
        so only in its own log): not counted as compiled; logged once per region."""
        self.skipped_calls += 1
        if path in self._skip_logged:
            return
        self._skip_logged.add(path)
        reasons = _reasons(fn, _code_of(fn, module))[1]
        last = " ".join(str(reasons[-1]).split())[:400] if reasons else "none recorded"
        log.warning("%s: region '%s' (%s) ran eager inside torch.compile: dynamo skipped it (its recompile limit, or a "
                    "frame it cannot compile). Last recompile reason: %s", self.label, path or "<whole model>",
                    type(module).__name__, last)

    def _ran_offloaded(self, path):
        """A region ComfyUI loaded partially runs eager, on purpose: its weights are cast and LoRA-patched per call by
        ComfyUI's own code, bound by the copy, and compiling through it would guard on each block's set of offloaded
        layers and on LoRA strengths (a recompile per block and per strength). Once it is fully loaded again it runs
        its compiled code. One log line per new partial load, naming every region it left eager."""
        self.offloaded_calls += 1
        if path in self.offloaded:
            return
        self.offloaded = {p for p, layers in self._layers.items() if _offloaded(layers)} | {path}
        log.info("%s: %d of %d region(s) partially loaded by ComfyUI (low-VRAM: some of their weights stay on the "
                 "offload device and are cast, LoRA included, on every call): they run eager while so, the others "
                 "compiled: %s", self.label, len(self.offloaded), self._regions,
                 ", ".join(p or "<whole model>" for p in sorted(self.offloaded, key=_natural)))

    def _route_error(self, exc, path, module, eager, args, kwargs):
        """An error from a compiled region goes where it belongs: an interrupt or an out-of-memory error propagates
        (ComfyUI's own handling: VAE Decode retries tiled), a graph break under fullgraph is the user's error, an
        error the same call also raises eagerly is the user's (it propagates with its own message and the model stays
        accelerated); only what eager does not raise is the backend's (this model falls back to eager)."""
        if _is_interrupt(exc):
            raise exc
        oom = _out_of_memory(exc)
        if oom is not None:
            raise oom
        if self.options.fullgraph and _graph_break(exc):
            raise FullGraphBreak(f"{self.label}: fullgraph is true, but region '{path or '<whole model>'}' "
                                 f"({type(module).__name__}) has a graph break: {_summary(exc)}. Set the DeepyTorch "
                                 "node's input 'fullgraph' to false to let torch.compile split the graph there.") from exc
        # raises the user's own error, if it is one; on copies, since blocks may update their inputs in place (current
        # ComfyUI's FLUX blocks do) and the real call still follows
        copies = torch.utils._pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))
        eager(*copies[0], **copies[1])
        self._fail(exc, path)
        return _EAGER

    def _fail(self, exc, path):
        if self.failed is None:
            self.failed = exc
            log.error("%s: backend '%s' failed in region '%s' (%s: %s); this model runs eager from now on",
                      self.label, self.backend.name, path or "<whole model>", type(exc).__name__, _summary(exc))

