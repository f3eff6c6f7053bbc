"""DEEPYTORCH_AUTO=diffusion | vae | diffusion,vae (off by default): the models ComfyUI's loaders return are
accelerated as the DeepyTorch nodes do with their defaults, so a client's plain API workflow (no DeepyTorch nodes)
runs accelerated without edits.

- diffusion: the ModelPatcher returned by comfy.sd.load_diffusion_model_state_dict (UNETLoader, GGUF loaders) and
  load_state_dict_guess_config (checkpoint loaders);
- vae: the VAE of load_state_dict_guess_config and the VAE returned by VAELoader.
The loader's own patcher carries the regions (as object patches): every clone of it (LoRA loaders, samplers) runs
them. A DeepyTorch node further down replaces them with its own (applying twice = applying once). Reversible.
"""
import functools
import logging
import os

log = logging.getLogger("deepytorch")

ENV = "DEEPYTORCH_AUTO"
KINDS = ("diffusion", "vae")
_enabled = set()
_originals = {}   # (owner, name) -> original
_wrappers = {}


def parse(value):
    """(kinds, unknown values) of a DEEPYTORCH_AUTO value."""
    words = [w.strip().lower() for w in (value or "").replace(";", ",").split(",") if w.strip()]
    if any(w in ("0", "off", "false", "no", "none") for w in words):
        return set(), []
    return {w for w in words if w in KINDS}, [w for w in words if w not in KINDS]


def enabled():
    return set(_enabled)


def _accelerate_model(patcher):
    from ..nodes.diffusion import accelerate_diffusion
    if patcher is not None and hasattr(patcher, "clone") and hasattr(patcher, "model"):
        accelerate_diffusion(patcher)   # the node's defaults
    return patcher


def _accelerate_vae(vae):
    from ..nodes.vae import accelerate_vae
    if vae is not None and getattr(vae, "patcher", None) is not None:
        try:
            accelerate_vae(vae)
        except ValueError as e:   # a VAE without decoder/encoder modules (e.g. TAESD): left as it is
            log.info("DeepyTorch: %s: VAE left as it is (%s)", ENV, e)
    return vae


def _checkpoint(out):
    if out and "diffusion" in _enabled:
        _accelerate_model(out[0])
    if out and len(out) > 2 and "vae" in _enabled:
        _accelerate_vae(out[2])
    return out


def _vae_node(out):
    if out and "vae" in _enabled:
        _accelerate_vae(out[0])
    return out


def _diffusion(out):
    if "diffusion" in _enabled:
        _accelerate_model(out)
    return out


def _targets():
    import comfy.sd
    import nodes
    return [(comfy.sd, "load_diffusion_model_state_dict", _diffusion),
            (comfy.sd, "load_state_dict_guess_config", _checkpoint),
            (nodes.VAELoader, "load_vae", _vae_node)]


def _wrap(original, after, method):
    if method:
        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            return after(original(self, *args, **kwargs))
    else:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return after(original(*args, **kwargs))
    wrapper.deepytorch_auto_original = original
    return wrapper


def patch():
    """Idempotent; reads DEEPYTORCH_AUTO once. Returns the kinds enabled."""
    if _originals or _enabled:
        return enabled()
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return set()
    kinds, unknown = parse(raw)
    if unknown:
        log.warning("DeepyTorch: %s=%r: ignored unknown value(s) %s (known: %s)", ENV, raw, ", ".join(unknown),
                    ", ".join(KINDS))
    if not kinds:
        log.info("DeepyTorch: %s=%r: automatic acceleration is off", ENV, raw)
        return set()
    _enabled.update(kinds)
    for owner, name, after in _targets():
        original = getattr(owner, name, None)
        if original is None:
            continue
        _originals[(owner, name)] = original
        _wrappers[(owner, name)] = _wrap(original, after, method=isinstance(owner, type))
        setattr(owner, name, _wrappers[(owner, name)])
    log.info("DeepyTorch: %s=%s: every %s from ComfyUI's loaders is accelerated with the nodes' defaults", ENV,
             ",".join(sorted(kinds)), " and ".join(("diffusion model" if k == "diffusion" else "VAE")
                                                 for k in sorted(kinds)))
    return enabled()


def unpatch():
    for (owner, name), original in _originals.items():
        if getattr(owner, name) is _wrappers[(owner, name)]:
            setattr(owner, name, original)
        else:
            log.warning("DeepyTorch: %s.%s was wrapped again after the %s patch; left as it is",
                        getattr(owner, "__name__", owner), name, ENV)
    _originals.clear()
    _wrappers.clear()
    _enabled.clear()
