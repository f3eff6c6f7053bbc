"""engine.step_cache's rules on a toy model, without ComfyUI (its import without ComfyUI: test_flux_sampling.py):
window, last step, consecutive skips, step accounting of samplers that call a branch twice per sigma, a new run when
sigma goes up, shape changes, the formulas."""
import torch

from comfyui_deepytorch.engine.step_cache import FIRST_BLOCK, WHOLE_MODEL, Config, StepCache

SIGMAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]   # 10 steps


def first_block_call(cache, sigma, key, x, change, control=False):
    """One FLUX-like call: first block residual `x * change`, remaining blocks add 1. Returns the output."""
    cache.begin_call(sigma, key, control=control)
    out0 = x + x * change
    if cache.first_block(x, out0, None):
        out = cache.remaining_output()
    else:
        out = cache.remaining_computed(out0 + 1.0)
    cache.call = None
    return out


def test_window_last_step_and_consecutive_skips():
    cache = StepCache(Config(threshold=0.5, start=0.2, end=0.8, max_consecutive=2), kind=FIRST_BLOCK)
    cache.begin_run(SIGMAS)
    x = torch.ones(2, 3)
    for s in SIGMAS[:-1]:
        first_block_call(cache, s, "b", x, 0.1)       # the same residual every step: estimate 0
    cache.end_run()
    # steps 0, 1 before start (0.2 = step 1.8 of 9: steps 0 and 1), 8 and 9 after end / last; 2 skips then 1 computed
    assert cache.runs[-1]["schedule"] == "CCSSCSSCCC"
    assert cache.tensor_count() == 0 and cache.peak_tensors == 2


def test_estimate_above_threshold_computes_and_the_skip_is_the_formula():
    cache = StepCache(Config(threshold=0.3, start=0.0, end=1.0, max_consecutive=9), kind=FIRST_BLOCK)
    cache.begin_run(SIGMAS[:5])
    x = torch.full((1, 4), 2.0)
    outs = [first_block_call(cache, s, "b", x, c) for s, c in zip(SIGMAS[:4], (0.1, 0.12, 0.5, 0.52))]
    assert cache.schedule == ["C", "S", "C", "C"]   # 0.2 change: skip; 4x change: compute; the last step computes
    # skipped: first block output of that step (2 + 0.24) + the cached residual (1)
    assert torch.equal(outs[1], torch.full((1, 4), 2.24 + 1.0))


def test_heun_like_calls_are_counted_as_steps_and_sigma_up_drops_the_cache():
    cache = StepCache(Config(threshold=1.0, start=0.0, end=1.0, max_consecutive=9), kind=FIRST_BLOCK)
    cache.begin_run([1.0, 0.75, 0.5, 0.25, 0.0])
    x = torch.ones(1, 2)
    for s in (1.0, 0.75, 0.75, 0.5, 0.5):   # heun: sigma_i, sigma_i+1 (correction), sigma_i+1 (next step), ...
        first_block_call(cache, s, "b", x, 0.1)
    assert cache.schedule == ["C", "S", "S", "S", "S"]
    first_block_call(cache, 0.75, "b", x, 0.1)    # sigma went up (a restarting sampler): computed, cache dropped
    first_block_call(cache, 0.5, "b", x, 0.1)
    cache.end_run()
    assert len(cache.runs) == 1 and cache.runs[0]["schedule"] == "CSSSSCS" and cache.tensor_count() == 0


def test_branches_decide_together_and_a_new_shape_computes():
    cache = StepCache(Config(threshold=1.0, start=0.0, end=1.0, max_consecutive=9), kind=FIRST_BLOCK)
    cache.begin_run(SIGMAS)
    a, b = torch.ones(1, 2), torch.ones(2, 2)
    for s in SIGMAS[:3]:
        first_block_call(cache, s, "pos", a, 0.1)
        first_block_call(cache, s, "neg", a, 0.1)
    assert cache.schedule == ["C", "S", "S"] and cache.peak_tensors == 2 and cache.tensor_count() == 4
    cache.begin_call(SIGMAS[3], "pos")
    cache.first_block(a, a * 1.1, None)
    assert cache.skipping
    cache.call = None
    cache.begin_call(SIGMAS[3], ("pos", "other shape"))   # a branch without a cache computes though the step skips
    assert not cache.first_block(b, b * 1.1, None)


def test_whole_model_formula_and_rate():
    cache = StepCache(Config(threshold=10.0, start=0.0, end=1.0, max_consecutive=9), kind=WHOLE_MODEL)
    cache.begin_run(SIGMAS)
    calls = []
    for s in SIGMAS[:4]:
        x = torch.full((1, 3), 1.0 + s)
        sigma = torch.tensor([s])
        cache.begin_call(s, "b")
        out = cache.whole_model(x, sigma, lambda: calls.append(s) or x * 0.5)
        cache.call = None
    assert cache.schedule == ["C", "C", "S", "S"] and calls == [1.0, 0.9]
    eps = (torch.full((1, 3), 1.9) - torch.full((1, 3), 1.9) * 0.5) / 0.9   # the last computed call's
    assert torch.equal(out, torch.full((1, 3), 1.7) - torch.tensor([0.7]).reshape(-1, 1) * eps)
    cache.end_run()
    assert cache.tensor_count() == 0


def test_controlnet_change_forces_a_step():
    cache = StepCache(Config(threshold=1.0, start=0.0, end=1.0, max_consecutive=9), kind=FIRST_BLOCK)
    cache.begin_run(SIGMAS)
    x = torch.ones(1, 2)
    for i, s in enumerate(SIGMAS[:6]):
        first_block_call(cache, s, "b", x, 0.1, control=2 <= i <= 3)
    assert cache.schedule == ["C", "S", "C", "S", "C", "S"]
