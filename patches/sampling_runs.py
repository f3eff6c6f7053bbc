"""Tell a DeepyTorch step cache where a sampling run starts and ends, on ComfyUI without patcher wrappers.

ComfyUI >= v0.3.7 has OUTER_SAMPLE wrappers (`ModelPatcher.add_wrapper_with_key`): the step cache node adds one
there and this patch does nothing. Older ComfyUI (v0.3.6) has none, so `comfy.samplers.CFGGuider.sample` (what
KSampler, KSamplerAdvanced and SamplerCustom(Advanced) call) is wrapped: a model whose transformer_options hold a
step cache (RUN_KEY) gets `begin_run(sigmas)` before and `end_run()` after; every other model runs exactly as
before. Feature-detected, idempotent, reversible.
"""
import functools

from ..engine import log

RUN_KEY = "deepytorch_step_cache"
_original = {}


def needed():
    import comfy.model_patcher
    return not hasattr(comfy.model_patcher.ModelPatcher, "add_wrapper_with_key")


def run_hook(model_options):
    return ((model_options or {}).get("transformer_options") or {}).get(RUN_KEY)


def _wrap(original):
    @functools.wraps(original)
    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        cache = run_hook(getattr(self, "model_options", None))
        if cache is None:
            return original(self, noise, latent_image, sampler, sigmas, *args, **kwargs)
        cache.begin_run(sigmas)
        try:
            return original(self, noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            cache.end_run()
    sample.deepytorch_original = original
    return sample


def patch():
    """Idempotent. True where CFGGuider.sample is wrapped."""
    if _original:
        return True
    import comfy.samplers
    if not needed() or not hasattr(comfy.samplers, "CFGGuider"):
        return False
    _original["sample"] = comfy.samplers.CFGGuider.sample
    comfy.samplers.CFGGuider.sample = _wrap(_original["sample"])
    log.info("step cache: comfy.samplers.CFGGuider.sample wrapped to mark sampling runs (this ComfyUI has no "
             "OUTER_SAMPLE wrappers)")
    return True


def unpatch():
    if not _original:
        return
    import comfy.samplers
    if getattr(comfy.samplers.CFGGuider.sample, "deepytorch_original", None) is _original["sample"]:
        comfy.samplers.CFGGuider.sample = _original["sample"]
    else:
        log.warning("step cache: comfy.samplers.CFGGuider.sample was wrapped again after our patch; left as it is")
    _original.clear()
