"""Per-model attention choice for the diffusion node.

ComfyUI uses PyTorch SDPA only on some GPUs; elsewhere it falls back to sub-quadratic or split attention, which is
slower and breaks dynamo graphs (it queries free memory). `auto` swaps those for SDPA, for THIS model only:
- where ComfyUI has `transformer_options["optimized_attention_override"]` (feature-detected), through it;
- otherwise (v0.3.6 / v0.3.7), by rebinding ComfyUI's `optimized_attention*` names only while one of this
  model's compiled regions runs (engine.regional's call context), and restoring them right after, so an eager
  branch of the same graph keeps ComfyUI's own attention.
"""
import contextlib
import inspect
import sys

ATTENTION_CHOICES = ["auto", "comfy", "sdpa"]
_NAMES = ("optimized_attention", "optimized_attention_masked")


def _attention():
    import comfy.ldm.modules.attention as attention
    return attention


def has_override():
    wrap = getattr(_attention(), "wrap_attn", None)
    if wrap is None:
        return False
    try:
        return "optimized_attention_override" in inspect.getsource(wrap)
    except (OSError, TypeError):
        return False


def comfy_uses_slow_attention():
    a = _attention()
    slow = {getattr(a, n, None) for n in ("attention_sub_quad", "attention_split", "attention_basic")} - {None}
    return a.optimized_attention in slow


_comfy_fallback = 0   # > 0 while a model whose backend failed runs eager: the override keeps ComfyUI's choice


def sdpa_override(func, *args, **kwargs):
    """transformer_options['optimized_attention_override']: run PyTorch SDPA instead of ComfyUI's choice (except in
    the eager fall-back of a failed backend, which is plain ComfyUI). One function for every model: compiled graphs
    guard on it."""
    if _comfy_fallback:
        return func(*args, **kwargs)
    return _attention().attention_pytorch(*args, **kwargs)


@contextlib.contextmanager
def comfy_attention():
    """Entered around the eager fall-back of a model whose backend failed."""
    global _comfy_fallback
    _comfy_fallback += 1
    try:
        yield
    finally:
        _comfy_fallback -= 1


def context(choice):
    """The attention choice and ComfyUI's own, as a key for compiled code (on ComfyUI without the per-model override
    the choice is made by rebinding module globals, which no saved guard sees)."""
    return f"attention={choice}; comfy={getattr(_attention().optimized_attention, '__name__', '?')}"


_vae_comfy = {}   # ComfyUI's VAE attention function, as its attention blocks chose it (one per process)


def vae_sdpa(q, k, v):
    """A VAE attention block's `optimized_attention` in DeepyTorch's copy of the VAE: PyTorch SDPA where ComfyUI
    chose split attention (on CPU: it queries free memory, a graph break in every decode, and no region with a
    graph break can be precompiled); ComfyUI's own in a failed backend's eager fall-back."""
    if _comfy_fallback:
        return _vae_comfy["fn"](q, k, v)
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    return vae_model.pytorch_attention(q, k, v)


def configure_vae(patcher, parts):
    """Object patches for the VAE copy's attention blocks (split attention -> SDPA, see vae_sdpa). Returns how many."""
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    slow = getattr(vae_model, "normal_attention", None)
    if slow is None or not hasattr(vae_model, "pytorch_attention"):
        return 0
    count = 0
    for part in parts:
        for name, module in getattr(patcher.model, part).named_modules():
            if module.__dict__.get("optimized_attention") is slow:
                _vae_comfy["fn"] = slow
                patcher.add_object_patch(".".join(p for p in (part, name, "optimized_attention") if p), vae_sdpa)
                count += 1
    return count


def _rebind_targets():
    """(module, name) pairs of ComfyUI modules that bound a slow attention function at import time."""
    a = _attention()
    slow_to_sdpa = {a.optimized_attention: a.attention_pytorch}
    if getattr(a, "optimized_attention_masked", None) is not None:
        slow_to_sdpa[a.optimized_attention_masked] = a.attention_pytorch
    targets = []
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith("comfy.ldm"):
            continue
        for name in _NAMES:
            current = getattr(module, name, None)
            if current in slow_to_sdpa:
                targets.append((module, name, current, slow_to_sdpa[current]))
    return targets


def configure(patcher, choice):
    """Apply the attention choice to this patcher. Returns (description, call_context or None). A failed backend's
    eager fall-back runs ComfyUI's own attention either way (call_context is not entered, the override steps aside
    inside `comfy_attention`)."""
    if choice == "comfy" or not hasattr(_attention(), "attention_pytorch"):
        return "ComfyUI's choice", None
    if choice == "auto" and not comfy_uses_slow_attention():
        return f"ComfyUI's choice ({_attention().optimized_attention.__name__}, already fast)", None
    if has_override():
        patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sdpa_override
        return "PyTorch SDPA (per-model override)", None
    return "PyTorch SDPA (rebound while this model's regions run)", sdpa_rebound()


def sdpa_rebound():
    """A context manager factory: ComfyUI's slow attention names rebound to SDPA while it is entered (around one
    model's compiled regions), restored right after. For models ComfyUI calls without transformer_options (a
    ControlNet's control model), where the per-model override cannot reach."""
    targets = _rebind_targets()

    @contextlib.contextmanager
    def sdpa_while_running():
        for module, name, _, sdpa in targets:
            setattr(module, name, sdpa)
        try:
            yield
        finally:
            for module, name, original, _ in targets:
                setattr(module, name, original)
    return sdpa_while_running
