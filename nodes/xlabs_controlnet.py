"""ComfyUI glue for XLabs ControlNet conditions (x-flux-comfyui "Apply Flux ControlNet" / "Apply Advanced Flux
ControlNet") in the DeepTorch Sampler.

For one sampling call each ControlNet is cast to the sampling device and dtype (its own tensors are put back
afterwards: XlabsSampler instead leaves it cast), its hint network is computed once per control image (kept across
runs), and, when the diffusion model came through "Apply DeepyTorch to diffusion model", its double blocks run
compiled with that model's backend and options: installed as the blocks' `forward` for the call and removed after
it, so the user's ControlNet module is left as it was. The residual rules are engine.flux_controlnet's.
"""
import contextlib
import types
import weakref

import torch

from ..engine import log
from ..engine.flux_controlnet import Control, Residuals, cast, window
from ..engine.hint_cache import HintCache
from ..engine.regional import AcceleratedModel, find_regions
from .accelerate import saving

NODE = "DeepTorch Sampler"


def accelerated_of(model):
    """The AcceleratedModel whose regions are installed on this ModelPatcher, or None (eager, or its backend
    failed)."""
    for value in model.object_patches.values():
        region = getattr(value, "deepytorch_region", None)
        if region is not None:
            return region[0] if region[0].failed is None else None
    return None


class _State:
    """What one XLabs ControlNet module keeps across runs: its hint cache and its compiled regions (per backend and
    options of the models it ran with). Lives as long as the module (a weak-key entry)."""

    def __init__(self, net):
        block = getattr(net, "input_hint_block", None)
        self.hint = HintCache(types.MethodType(type(block).forward, block)) if isinstance(block, torch.nn.Module) \
            else None
        self.compiled = {}   # (backend name, options) -> (AcceleratedModel, {path: forward})

    def regions(self, net, model_acc):
        key = (model_acc.backend.name, model_acc.options)
        if key not in self.compiled:
            acc = saving(AcceleratedModel(f"XLabs ControlNet {type(net).__name__}", model_acc.backend,
                                          model_acc.options))
            paths = [p for p, _ in find_regions(net) if p]
            self.compiled[key] = (acc, acc.region_forwards(net, paths) if paths else {})
        return self.compiled[key]


_states = weakref.WeakKeyDictionary()


def state(net):
    if net not in _states:
        _states[net] = _State(net)
    return _states[net]


@contextlib.contextmanager
def _installed(net, model_acc):
    """The hint cache and (with an accelerated model) the compiled regions as `forward` of the ControlNet's
    sub-modules for the block; a sub-module whose `forward` someone else replaced keeps it, said in the log."""
    st = state(net)
    patches = {}
    if st.hint is not None:
        patches["input_hint_block"] = st.hint
    if model_acc is not None:
        patches.update(st.regions(net, model_acc)[1])
    done, kept = [], []
    try:
        for path, forward in patches.items():
            module = net.get_submodule(path)
            if "forward" in module.__dict__:
                kept.append(path)
                continue
            module.forward = forward
            done.append(module)
        if kept:
            log.info("%s: XLabs ControlNet %s: %s keep the forward another node installed (not compiled, no hint "
                     "cache)", NODE, type(net).__name__, ", ".join(kept))
        yield
    finally:
        for module in done:
            del module.forward


def prepare(conditions, height, width, schedule_len, device, dtype, model_acc, stack):
    """engine.flux_controlnet.Residuals for the conditions, with each ControlNet cast and its forwards installed
    until `stack` (a contextlib.ExitStack around the sampling) closes."""
    controls, nets = [], []
    for el in conditions:
        net = el["model"]
        if not isinstance(net, torch.nn.Module):
            raise ValueError(f"{NODE}: controlnet_condition has no ControlNet model (got {type(net).__name__})")
        # XlabsSampler's order: resize in the image's own dtype, then cast
        image = torch.nn.functional.interpolate(el["img"], size=(height, width), scale_factor=None, mode="bicubic")
        controls.append(Control(net, image.to(device, dtype=dtype), el["controlnet_strength"],
                                *window(el["start"], el["end"], schedule_len)))
        if all(n is not net for n in nets):
            nets.append(net)
    for net in nets:
        stack.enter_context(cast(net, device, dtype))
        stack.enter_context(_installed(net, model_acc))
    how = "compiled with the model's backend '%s'" % model_acc.backend.name if model_acc is not None else \
        "eager (the model is not accelerated by DeepyTorch)"
    log.info("%s: %d XLabs ControlNet condition(s), %s", NODE, len(controls), how)
    return Residuals(controls)


def report(residuals):
    """After sampling: where XLabs' rules had no ControlNet output to use (XlabsSampler raises there)."""
    if residuals is not None and residuals.missing:
        log.info("%s: %d ControlNet use(s) before any ControlNet output existed (a first step outside its window: "
                 "XlabsSampler raises UnboundLocalError there); they added no residual", NODE, residuals.missing)
