"""Step cache: skip the transformer's work on sampling steps whose result barely changes. Torch only (imports
without ComfyUI); the ComfyUI glue is nodes/step_cache.py, the DeepTorch Sampler calls the same object.

Two decisions, neither with per-model coefficients:
- FIRST_BLOCK (FLUX: a stack of blocks; "First Block Cache"): the first block always runs. The estimate is the
  relative L1 change of its residual (output - input) since the branch's last computed step. On a skipped step the
  remaining blocks are replaced by the branch's cached residual of those blocks:
  `out = cat(txt0, img0) + cached`, where (txt0, img0) is the first block's output of this step.
- WHOLE_MODEL (SD / SDXL UNets, whose skip connections make "the remaining blocks" ill-defined; EasyCache's
  signal): the estimate is the output change predicted from the input change since the last computed step times
  the rate (output change / input change) measured between the last two computed steps, relative to the output.
  The model's output is kept as `eps = (x - denoised) / sigma` (the noise, or FLUX's velocity), which changes less
  from step to step than the denoised image; a skipped step returns `x - sigma * cached_eps`.
Both estimates are taken against the last computed step, so the error of consecutive skips accumulates in them.

A step is decided once, by its first model call (cond / uncond batched together in ComfyUI, or the positive
branch of the DeepTorch Sampler), for every branch of that step; a branch without a usable cache computes. Always
computed: steps outside [start, end] of the schedule, the last step, the step after `max_consecutive` skips, a step
where a ControlNet starts or stops, a branch whose shape / dtype / device changed, the step after sigma went up (a
restarting sampler: the cache is dropped). State lives for one sampling run (`begin_run` .. `end_run`), at most two
tensors per branch, none after `end_run`.

The decisions are eager Python between compiled regions: the compiled blocks are called as they are, skipping and
computing steps compile nothing.
"""
from collections import deque
from dataclasses import dataclass

import torch

from . import log

FIRST_BLOCK, WHOLE_MODEL = "first block", "whole model"


@dataclass(frozen=True)
class Config:
    threshold: float = 0.1     # skip while the estimated relative change stays below this; 0: never skip
    start: float = 0.15        # fraction of the schedule before which every step is computed
    end: float = 0.95          # ... and after which
    max_consecutive: int = 3   # skipped steps in a row at most
    verify: bool = False       # compute every step; log the real error of each would-be skip next to the estimate


def rel_l1(a, b):
    """mean |a - b| / mean |b| as a Python float (0 where b is all zeros and a == b)."""
    den = b.abs().mean()
    num = (a - b).abs().mean()
    return float(num / den) if float(den) > 0 else (0.0 if float(num) == 0 else float("inf"))


def _meta(t):
    return (tuple(t.shape), t.dtype, t.device)


class _Branch:
    """One branch (a key: cond / uncond layout and shape) of the run: two tensors at most."""
    __slots__ = ("signal", "cached", "meta", "rate", "norm", "control")

    def __init__(self):
        self.signal = self.cached = self.meta = self.rate = self.norm = self.control = None

    def tensors(self):
        return sum(t is not None for t in (self.signal, self.cached))


class StepCache:
    """One node's cache. Shared by every clone of its ModelPatcher (`__deepcopy__` returns self: ComfyUI deep-copies
    model_options on clone), used by one sampling run at a time."""

    def __init__(self, config, label="model", kind=FIRST_BLOCK):
        self.config = config
        self.label = label
        self.kind = kind
        self._reset_run(None)
        self.runs = deque(maxlen=16)   # the latest finished runs: {"schedule": "CCS..", "computed": n, ...}
        self.peak_tensors = 0   # most cache tensors one branch held at once (tests: <= 2)
        self.warned = set()     # other caches already warned about (the node's)

    def __deepcopy__(self, memo):
        return self

    # -- runs and calls ----------------------------------------------------------------------------------------
    def _reset_run(self, sigmas):
        self.sigmas = None if sigmas is None else [float(s) for s in sigmas]
        self.branches = {}
        self.schedule = []      # per step: "C" or "S"
        self.verify_log = []    # (step, estimate, real error) of would-be skips (verify)
        self.step = -1
        self.step_sigma = None
        self.step_keys = set()
        self.decision = None    # this step's: True = skip, False = compute, None = not decided yet
        self.consecutive = 0
        self.call = None        # the model call under way: _Call
        self.run_kind = None    # how this run's calls decide (a FLUX model compiled whole decides on the whole model)

    def begin_run(self, sigmas=None):
        if self.step >= 0:
            self.end_run()
        self._reset_run(sigmas)

    def end_run(self):
        """Log the run's line, drop every cache tensor."""
        if self.step >= 0:
            sched = "".join(self.schedule)
            kind = self.run_kind or self.kind
            run = {"schedule": sched, "computed": sched.count("C"), "skipped": sched.count("S"),
                   "verify": list(self.verify_log), "kind": kind}
            self.runs.append(run)
            log.info("step cache (%s, %s): %d step(s), %d computed, %d skipped: %s", self.label, kind,
                     len(sched), run["computed"], run["skipped"], sched)
            for step, est, real in self.verify_log:
                log.info("step cache (%s) verify: step %d would be skipped: estimate %.4f, real error %.4f",
                         self.label, step, est, real)
        self._reset_run(None)

    def tensor_count(self):
        return sum(b.tensors() for b in self.branches.values())

    def _fraction(self, sigma):
        """Position of `sigma` in the run's schedule (0 first step .. 1 last), and whether it is the last step."""
        s = self.sigmas
        if not s or len(s) < 2:
            return 0.0, False
        i = min(range(len(s) - 1), key=lambda j: abs(s[j] - sigma))
        return i / max(len(s) - 2, 1), i >= len(s) - 2

    def begin_call(self, sigma, key, control=False, blocks=None):
        """Before one model call at `sigma` (a float) for branch `key`; `control`: which ControlNets contribute (a bool,
        or any value that compares equal while they stay the same; a change forces the step);
        `blocks`: this call decides at its first block (FIRST_BLOCK), else on the whole model (default: the
        cache's kind)."""
        sigma = float(sigma)
        if self.step_sigma is not None and sigma > self.step_sigma + 1e-9 * max(1.0, abs(self.step_sigma)):
            # a sampler that restarts (e.g. "restart"), or a run whose start nothing told us: what is cached was
            # computed for another trajectory
            log.info("step cache (%s): sigma went up (%.4g -> %.4g): the cached results are dropped", self.label,
                     self.step_sigma, sigma)
            self.branches = {}
            self.consecutive = 0
        if self.step < 0 or sigma != self.step_sigma or key in self.step_keys:
            self.step += 1        # heun & co. call one branch twice at one sigma: two steps
            self.step_sigma = sigma
            self.step_keys = set()
            self.decision = None
            self.schedule.append("C")
        self.step_keys.add(key)
        branch = self.branches.setdefault(key, _Branch())
        fraction, last = self._fraction(sigma)
        c = self.config
        force = (last or not (c.start <= fraction <= c.end) or self.consecutive >= c.max_consecutive
                 or (branch.control is not None and branch.control != control))
        branch.control = control
        self.call = _Call(key, branch, sigma, force)
        self.call.blocks = (self.kind == FIRST_BLOCK) if blocks is None else bool(blocks)
        self.run_kind = FIRST_BLOCK if self.call.blocks else WHOLE_MODEL
        return self.call

    def _decide(self, estimate, usable):
        """The step's decision (made by its first call); a branch that cannot skip computes."""
        call = self.call
        call.estimate = estimate
        if self.decision is None:
            self.decision = bool(usable and not call.force and estimate < self.config.threshold)
            if self.decision:
                self.schedule[-1] = "S"
                self.consecutive += 1
            else:
                self.consecutive = 0
        return self.decision and usable and not call.force

    def will_skip(self):
        """Before the call's first block: True where this call will be skipped whatever it computes (the step is
        already decided skip, by an earlier branch, and this branch has a cache; not in verify)."""
        call = self.call
        return bool(self.decision and not self.config.verify and call is not None and call.blocks
                    and call.branch.signal is not None and not call.force)

    def _note_peak(self, branch):
        self.peak_tensors = max(self.peak_tensors, branch.tensors())

    # -- FIRST_BLOCK ---------------------------------------------------------------------------------------------
    def first_block(self, block_in, block_out, txt_out):
        """After the first block of a call: decide. `block_in` / `block_out`: its image-token input and output;
        `txt_out`: its text-token output (None when the block has no separate text stream). Returns True where
        the remaining blocks are to be skipped (then `remaining_output()` is their output)."""
        call = self.call
        residual = block_out - block_in
        base = block_out if txt_out is None else torch.cat((txt_out, block_out), 1)
        call.base = base
        b = call.branch
        usable = b.signal is not None and b.meta == _meta(base)
        if b.meta is not None and b.meta != _meta(base):
            b.signal = b.cached = None
        estimate = rel_l1(residual, b.signal) if usable else float("inf")
        call.skip = self._decide(estimate, usable)
        call.residual = residual
        if self.config.verify and call.skip:
            call.verify, call.skip = True, False   # compute anyway, compare at the end
        return call.skip

    @property
    def skipping(self):
        return self.call is not None and self.call.skip

    def remaining_output(self):
        """Output of the last block on a skipped call: the first block's output + the cached residual."""
        call = self.call
        return call.base + call.branch.cached

    def remaining_computed(self, out):
        """The last block's output on a computed call: store what the next skips need."""
        call = self.call
        b = call.branch
        if call.verify:
            real = rel_l1(self.remaining_output(), out)
            self.verify_log.append((self.step, call.estimate, real))
            return out
        b.cached = out - call.base
        b.signal = call.residual
        b.meta = _meta(call.base)
        self._note_peak(b)
        call.base = call.residual = None
        return out

    # -- WHOLE_MODEL -------------------------------------------------------------------------------------------
    def whole_model(self, x, sigma, compute):
        """One model call on `x` at per-sample `sigma` (tensor (b,) or float): `compute()` -> denoised, or the
        cached estimate `x - sigma * eps`."""
        call = self.call
        b = call.branch
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x) if torch.is_tensor(sigma) else float(sigma)
        if b.meta is not None and b.meta != _meta(x):
            b.signal = b.cached = b.rate = b.norm = None
        usable = b.cached is not None and b.rate is not None
        estimate = float("inf")
        if usable:
            estimate = b.rate * float((x - b.signal).abs().mean()) / b.norm if b.norm > 0 else float("inf")
        skip = self._decide(estimate, usable)
        if skip and not self.config.verify:
            return x - s * b.cached
        out = compute()
        eps = (x - out) / s
        if skip:    # verify: the reused output next to the real one
            self.verify_log.append((self.step, estimate, rel_l1(x - s * b.cached, out)))
            return out
        if b.cached is not None:
            dx = float((x - b.signal).abs().mean())
            b.rate = float((eps - b.cached).abs().mean()) / dx if dx > 0 else None
        b.signal, b.cached, b.meta = x, eps, _meta(x)
        b.norm = float(eps.abs().mean())
        self._note_peak(b)
        return out


class _Call:
    __slots__ = ("key", "branch", "sigma", "force", "skip", "verify", "base", "residual", "estimate", "blocks")

    def __init__(self, key, branch, sigma, force):
        self.key, self.branch, self.sigma, self.force = key, branch, sigma, force
        self.skip = self.verify = False
        self.base = self.residual = None
        self.estimate = None
