"""Apply DeepyTorch step cache: MODEL -> MODEL whose sampling skips the transformer's work on steps that barely
change (engine.step_cache decides). ComfyUI glue only:

- every model call goes through a model function wrapper (`model_options["model_function_wrapper"]`, on every
  ComfyUI version; a wrapper already there is called inside ours);
- FLUX: the first-block decision and the skip run in ComfyUI's "dit" block-replace patches, which call the blocks
  as they are (compiled regions included): no ComfyUI forward is copied, no block's `forward` is replaced. Another
  node's "dit" patch on a block runs inside ours, whether it was set before our node or after it (e.g. ComfyUI's
  SkipLayerGuidanceDiT, per call): never lost, and a call with other patches is a branch of its own;
- other models (SD / SDXL UNets) and a FLUX model compiled whole: the decision is taken on the whole model call;
- a sampling run starts and ends in an OUTER_SAMPLE wrapper (ComfyUI >= v0.3.7) or patches.sampling_runs (older).
The DeepTorch Sampler finds the same cache in transformer_options and drives it itself (nodes/sampler.py).
"""
import torch

from ..engine import log
from ..engine.step_cache import FIRST_BLOCK, WHOLE_MODEL, Config, StepCache
from ..patches.sampling_runs import RUN_KEY
from .common import CATEGORY
from .flux_model_call import is_flux

NODE = "Apply DeepyTorch step cache"
OTHER_CACHE_WRAPPER_KEYS = ("easycache", "lazycache")


def step_cache_of(model):
    """The StepCache installed on a ModelPatcher, or None."""
    return (model.model_options.get("transformer_options") or {}).get(RUN_KEY)


class ApplyDeepyTorchStepCache:
    """MODEL -> MODEL: a clone that skips the transformer on steps whose estimated change stays below threshold."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (before or after 'Apply DeepyTorch to diffusion "
                                           "model' and LoRA loaders: the order does not matter)."}),
            "threshold": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                          "Skip a step while its estimated relative change since the last computed step stays "
                          "below this. 0: never skip (the image is the uncached one). FLUX (first block's change): "
                          "0.08-0.12 are the published starting points; SD / SDXL (predicted output change): "
                          "0.1-0.2. Higher: faster, less exact. Check with verify."}),
            "start": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                      "Fraction of the schedule before which every step is computed (the first steps set the "
                      "composition)."}),
            "end": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the schedule after which every step is computed (the last step always is)."}),
            "max_consecutive": ("INT", {"default": 3, "min": 1, "max": 100, "tooltip":
                                "At most this many skipped steps in a row; the next one is computed."}),
            "verify": ("BOOLEAN", {"default": False, "tooltip":
                       "Compute every step anyway (no speed-up) and log, for each step that would be skipped, the "
                       "real error of the reused output next to the estimate: to pick a threshold for a model."}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Skips the diffusion model's work on sampling steps that barely change (FLUX: First Block Cache; "
                   "SD / SDXL: EasyCache's signal), with no per-model coefficients. Works with compiled models, "
                   "LoRA, ControlNet, every ComfyUI sampler and the DeepTorch Sampler; one log line per run says "
                   "which steps were skipped.")

    def apply(self, model, threshold, start, end, max_consecutive, verify):
        if start > end:
            raise ValueError(f"{NODE}: start ({start}) is after end ({end})")
        m = model.clone()
        install(m, Config(threshold, start, end, max_consecutive, verify))
        return (m,)


def install(m, config):
    """Install a new StepCache on the ModelPatcher `m` (replacing one installed before). Returns it."""
    dm = m.model.diffusion_model
    label = type(m.model).__name__
    flux = is_flux(dm) and len(dm.double_blocks) > 0 and len(dm.single_blocks) > 0
    cache = StepCache(config, label, FIRST_BLOCK if flux else WHOLE_MODEL)
    _warn_other_caches(m, cache)
    previous = m.model_options.get("model_function_wrapper")
    previous = getattr(previous, "deepytorch_previous", previous)
    m.set_model_unet_function_wrapper(_ModelWrapper(cache, previous, flux and (len(dm.double_blocks),
                                                                              len(dm.single_blocks))))
    m.model_options.setdefault("transformer_options", {})[RUN_KEY] = cache
    if flux:
        to, _ = own_patches(m.model_options["transformer_options"], cache, len(dm.double_blocks),
                            len(dm.single_blocks))
        for (block, i), patch in to["patches_replace"]["dit"].items():
            if isinstance(patch, _BlockPatch):
                m.set_model_patch_replace(patch, "dit", block, i)
    outer = _outer_sample_type()
    if outer is not None:
        m.remove_wrappers_with_key(outer, RUN_KEY)
        m.add_wrapper_with_key(outer, RUN_KEY, _OuterSample(cache))
    log.info("%s: %s, decided on the %s, threshold %g, steps %g..%g of the schedule, at most %d skip(s) in a row%s",
             NODE, label, cache.kind, config.threshold, config.start, config.end, config.max_consecutive,
             ", verify (every step computed)" if config.verify else "")
    return cache


def _warn_other_caches(m, cache):
    """Once per cache and other cache: at install, and at the start of a run (another cache applied after ours)."""
    for other in other_caches(m):
        if other not in cache.warned:
            cache.warned.add(other)
            log.warning("%s: %s is also on this model; stacking step caches compounds their errors (use one)",
                        NODE, other)


def _outer_sample_type():
    try:
        import comfy.patcher_extension as pe
    except ImportError:   # ComfyUI without patcher wrappers: patches.sampling_runs marks the runs
        return None
    return getattr(getattr(pe, "WrappersMP", None), "OUTER_SAMPLE", None)


def other_caches(m):
    """Names of other step caches found on the ModelPatcher `m` (ComfyUI's EasyCache / LazyCache, TeaCache-style
    forward_orig replacements, wrappers named like caches)."""
    found = []
    for by_key in (getattr(m, "wrappers", None) or {}).values():
        found += [f"ComfyUI's {k}" for k in by_key if k in OTHER_CACHE_WRAPPER_KEYS and f"ComfyUI's {k}" not in found]
    found += [f"an object patch of {k} (TeaCache / First Block Cache style)" for k in m.object_patches
              if k.startswith("diffusion_model.forward_orig")]
    wrapper = m.model_options.get("model_function_wrapper")
    if wrapper is not None and not isinstance(wrapper, _ModelWrapper):
        name = getattr(wrapper, "__qualname__", type(wrapper).__qualname__)
        if "cache" in name.lower():
            found.append(f"a model function wrapper {name}")
    return found


TORCH_COMPILE_WRAPPER = "torch.compile"   # the key of ComfyUI's TorchCompileModel wrapper (comfy_api.torch_helpers)


def _compiled_whole(dm, transformer_options):
    """The diffusion model runs as one compiled graph (DeepyTorch scope 'whole', a torch.compile'd module, ComfyUI's
    TorchCompileModel): block patches would be traced into it (and guarded on), so the decision is taken on the
    whole call and the block patches are left out of it."""
    forward = dm.__dict__.get("forward") if dm is not None else None
    wrappers = ((transformer_options or {}).get("wrappers") or {}).get("apply_model") or {}
    return (getattr(forward, "deepytorch_region", None) is not None
            or isinstance(dm, torch._dynamo.eval_frame.OptimizedModule) or TORCH_COMPILE_WRAPPER in wrappers)


def _without_block_patches(c):
    """The call's conditioning with this cache's "dit" patches taken out of its transformer_options (another node's
    patch that ran inside one of ours stays)."""
    to = c.get("transformer_options") or {}
    replace = to.get("patches_replace") or {}
    dit = {}
    for k, v in (replace.get("dit") or {}).items():
        while isinstance(v, _BlockPatch):
            v = v.inner
        if v is not None:
            dit[k] = v
    replace = {**{k: v for k, v in replace.items() if k != "dit"}, **({"dit": dit} if dit else {})}
    return dict(c, transformer_options=dict(to, patches_replace=replace))


def own_patches(transformer_options, cache, n_double, n_single):
    """(transformer_options whose "dit" patch on every FLUX block is one of `cache`'s, the other patches found).
    Where another node's patch took the place of ours (set after our node, or per call as ComfyUI's
    SkipLayerGuidanceDiT does) or was there before, ours calls it inside: it runs whenever the block would, and a
    skipped call leaves it out as it leaves the block out. The other patches found name the call's branch (a call
    with other blocks is not the branch's usual call)."""
    to = transformer_options or {}
    replace = to.get("patches_replace") or {}
    dit = replace.get("dit") or {}
    mine, others = {}, []
    for kind, n in (("double", n_double), ("single", n_single)):
        for i in range(n):
            key = (kind + "_block", i)
            patch = dit.get(key)
            if isinstance(patch, _BlockPatch) and patch.cache is cache:
                continue
            if isinstance(patch, _BlockPatch):   # another step cache's (warned about): what it wrapped
                patch = patch.inner
            mine[key] = _BlockPatch(cache, kind, kind == "double" and i == 0, kind == "single" and i == n - 1,
                                    patch)
            if patch is not None:
                others.append((key, id(patch)))
    if not mine:
        return to, ()
    return dict(to, patches_replace=dict(replace, dit={**dit, **mine})), tuple(others)


class _ModelWrapper:
    """ComfyUI's model function wrapper: one call of apply_model for one (cond / uncond) batch."""

    def __init__(self, cache, previous, flux):
        # flux: (double blocks, single blocks) of a FLUX model, else False
        self.cache, self.deepytorch_previous, self.flux = cache, previous, flux

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        previous = self.deepytorch_previous
        dm = getattr(getattr(apply_model, "__self__", None), "diffusion_model", None)
        blocks = bool(self.flux) and not _compiled_whole(dm, c.get("transformer_options"))
        others = ()
        if blocks:
            to, others = own_patches(c.get("transformer_options"), self.cache, *self.flux)
            if to is not c.get("transformer_options"):
                c = dict(c, transformer_options=to)
                args = dict(args, c=c)
        elif self.flux:
            c = _without_block_patches(c)
            args = dict(args, c=c)
        key = (tuple(args.get("cond_or_uncond") or ()), tuple(x.shape)) + ((others,) if others else ())
        self.cache.begin_call(float(t.reshape(-1)[0]), key, control=c.get("control") is not None, blocks=blocks)

        def compute():
            return previous(apply_model, args) if previous is not None else apply_model(x, t, **c)
        try:
            return compute() if blocks else self.cache.whole_model(x, t, compute)
        finally:
            self.cache.call = None


class _BlockPatch:
    """A "dit" block-replace patch of a FLUX block: the first double block decides, the others pass their input
    through on a skipped call, the last single block returns the cached output. `inner`: another node's patch of
    this block, called in the block's place."""

    def __init__(self, cache, kind, first, last, inner=None):
        self.cache, self.kind, self.first, self.last, self.inner = cache, kind, first, last, inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        cache, inner = self.cache, self.inner
        original = extra["original_block"] if inner is None else (lambda a: inner(a, extra))
        call = cache.call
        if call is None or not call.blocks:
            return original(args)
        if self.first:
            out = original(args)
            cache.first_block(args["img"], out["img"], out["txt"])
            return out
        if call.skip:
            if self.last:
                return {"img": cache.remaining_output()}
            return {"img": args["img"], "txt": args["txt"]} if self.kind == "double" else {"img": args["img"]}
        out = original(args)
        if self.last:
            out["img"] = cache.remaining_computed(out["img"])
        return out


class _OuterSample:
    """OUTER_SAMPLE wrapper (ComfyUI >= v0.3.7): one sampling run of the cache."""

    def __init__(self, cache):
        self.cache = cache

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        patcher = getattr(getattr(executor, "class_obj", None), "model_patcher", None)
        if patcher is not None:
            _warn_other_caches(patcher, self.cache)
        self.cache.begin_run(sigmas)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            self.cache.end_run()
