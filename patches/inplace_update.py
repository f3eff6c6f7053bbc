"""Make the ModelPatchers of diffusion models created by ComfyUI's loaders use in-place weight updates.

A compiled (or DeepGPU) model captured its weight tensors. ComfyUI's LoRA patching replaces a patched weight with a
new Parameter unless the patcher has `weight_inplace_update=True`; then the compiled graph would keep the old tensor
(LoRA silently ignored) or recompile. Alibaba's guide asks users to add `weight_inplace_update=True` by hand in
`comfy/sd.py`; this does the same at run time, on every ComfyUI version: the loader functions that build a diffusion
model's patcher are wrapped and the flag is set on the patcher they return (clones inherit it). CLIP and VAE
patchers are left alone, and the ModelPatcher class is not replaced.

Opt out with DEEPYTORCH_INPLACE_UPDATE=0.
"""
import functools
import logging
import os

log = logging.getLogger("deepytorch")

ENV_OPT_OUT = "DEEPYTORCH_INPLACE_UPDATE"
# comfy.sd functions that build a diffusion model's ModelPatcher, and where the patcher is in what they return
LOADERS = {
    "load_diffusion_model_state_dict": lambda out: out,                     # UNETLoader, GGUF loaders
    "load_state_dict_guess_config": lambda out: out[0] if out else None,    # CheckpointLoaderSimple
}
_originals = {}   # name -> the function we wrapped
_wrappers = {}    # name -> our wrapper (compared by identity: functools.wraps copies attributes onto others' wrappers)


def enabled_by_env():
    return os.environ.get(ENV_OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def set_inplace(patcher):
    """Set the flag on one ModelPatcher (feature-detected: a patcher without the attribute is left alone)."""
    if patcher is not None and hasattr(patcher, "weight_inplace_update"):
        patcher.weight_inplace_update = True
    return patcher


def _wrap(name, original, get_patcher):
    @functools.wraps(original)
    def loader(*args, **kwargs):
        out = original(*args, **kwargs)
        set_inplace(get_patcher(out))
        return out
    loader.deepytorch_inplace_original = original
    return loader


def patch():
    """Idempotent. Returns the names of the functions wrapped."""
    if _originals:
        return list(_originals)
    if not enabled_by_env():
        log.info("DeepyTorch: in-place weight update left off (%s=%s)", ENV_OPT_OUT, os.environ.get(ENV_OPT_OUT))
        return []
    import comfy.model_patcher
    import comfy.sd
    if "weight_inplace_update" not in comfy.model_patcher.ModelPatcher.__init__.__code__.co_varnames:
        log.warning("DeepyTorch: this ComfyUI's ModelPatcher has no weight_inplace_update; patch not applied")
        return []
    for name, get_patcher in LOADERS.items():
        original = getattr(comfy.sd, name, None)
        if original is None:
            continue
        _originals[name] = original
        _wrappers[name] = _wrap(name, original, get_patcher)
        setattr(comfy.sd, name, _wrappers[name])
    log.info("DeepyTorch: in-place weight update enabled for diffusion models from comfy.sd.%s",
             ", comfy.sd.".join(_originals))
    return list(_originals)


def unpatch():
    """Restore comfy.sd exactly (the same function objects as before `patch`)."""
    if not _originals:
        return
    import comfy.sd
    for name, original in _originals.items():
        if getattr(comfy.sd, name) is _wrappers[name]:
            setattr(comfy.sd, name, original)
        else:   # someone wrapped our wrapper since: restoring would drop theirs
            log.warning("DeepyTorch: comfy.sd.%s was wrapped again after our patch; left as it is", name)
    _originals.clear()
    _wrappers.clear()

