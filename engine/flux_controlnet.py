"""XLabs ControlNets in XLabs' FLUX sampling (x-flux-comfyui "Apply Flux ControlNet" conditions): the double-block
residuals of each step as XLabs' denoise_controlnet computes them, and a ControlNet cast to the sampling device and
dtype for one run with its own tensors put back afterwards. Torch-only.
"""
import contextlib
from dataclasses import dataclass

import torch


@dataclass
class Control:
    net: torch.nn.Module
    image: torch.Tensor     # the control image at the sampling size, in the sampling dtype
    strength: float
    start: int              # first and last step index it runs: XLabs' int(fraction * schedule length)
    end: int


def window(start, end, schedule_len):
    """XlabsSampler's step window of a condition's start / end fractions."""
    return int(start * schedule_len), int(end * schedule_len)


class Residuals:
    """The residuals for the model's double blocks at one step, by XLabs' rules (denoise_controlnet):

    - negative branch (true CFG): every ControlNet inside its window adds strength x its output;
    - positive branch: every ControlNet inside its window runs, and every ControlNet - those outside their window
      too - then adds strength x the positive branch's latest ControlNet output: outside its window a ControlNet
      reuses the last output computed (its own from an earlier step, or the one before it in the chain).
      XlabsSampler raises UnboundLocalError where no output exists yet (a first step outside every window); here
      that ControlNet adds nothing, counted in `missing`.
    `call(control)` runs one ControlNet on the step's inputs and returns its residuals."""

    def __init__(self, controls):
        self.controls = list(controls)
        self.last = None     # XLabs' block_res_samples: the positive branch's latest ControlNet output
        self.missing = 0     # (step, ControlNet) pairs of the positive branch without any output to use
        self.reused = 0      # pairs that reused an earlier output (outside the window)
        self.computed = 0    # ControlNet calls

    def __call__(self, step, negative, call):
        states = None
        for c in self.controls:
            inside = c.start <= step <= c.end
            if inside:
                out = call(c)
                self.computed += 1
                if negative:
                    states = _add(states, out, c.strength)
                    continue
                self.last = out
            elif negative:
                continue
            elif self.last is None:
                self.missing += 1
                continue
            else:
                self.reused += 1
            states = _add(states, self.last, c.strength)
        return states


def _add(states, samples, strength):
    if states is None:
        return [s * strength for s in samples]
    if len(states) == len(samples):   # XLabs adds only outputs of the same depth
        return [a + s * strength for a, s in zip(states, samples)]
    return states


@contextlib.contextmanager
def cast(module, device, dtype):
    """`module`'s floating-point tensors on `device` in `dtype` inside the block; afterwards each parameter and
    buffer holds its own original tensor again (the originals are kept, not cast back, so nothing is rounded)."""
    swapped = []
    try:
        for t in (*module.parameters(), *module.buffers()):
            old = t.data
            new = old.to(device, dtype=dtype if old.is_floating_point() else old.dtype)
            if new.dtype == old.dtype and new.device == old.device and new.data_ptr() == old.data_ptr():
                continue
            t.data = new
            swapped.append((t, old))
        yield module
    finally:
        for t, old in reversed(swapped):
            t.data = old
