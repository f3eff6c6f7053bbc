"""The attention choice of the diffusion node: PyTorch SDPA for the accelerated model only."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from harness import workflows as wf

TOL = 1


def sdpa_ops(fn):
    """Names of the SDPA aten ops that ran (eagerly) inside fn()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_comfyui_uses_a_slow_attention_on_cpu(comfy):
    import comfy.ldm.modules.attention as attention
    assert comfy.package.nodes.attention.comfy_uses_slow_attention()
    assert attention.optimized_attention.__name__ in ("attention_sub_quad", "attention_split")


def test_auto_sdpa_matches_eager_and_removes_graph_breaks(comfy, run, deepy_log):
    eager = comfy.image(run(wf.flux_t2i(prefix="at_e", seed=5)), "11")
    graphs = {}
    stats = comfy.package.engine.precompiled.STATS
    for choice in ("comfy", "auto"):
        torch._dynamo.reset()
        counters.clear()
        loads = stats["loads"]
        img = comfy.image(run(wf.flux_t2i(prefix=f"at_{choice}", seed=5, accel=wf.accel_inputs(attention=choice))),
                          "11")
        assert np.abs(img - eager).max() <= TOL, choice
        # graphs dynamo traced, plus whole-block graphs loaded from precompiled artifacts (an earlier run's)
        graphs[choice] = counters["stats"]["unique_graphs"] + stats["loads"] - loads
    # SDPA: one graph per block class (double, single); ComfyUI's sub-quadratic attention breaks them up
    assert graphs["auto"] == 2
    assert graphs["comfy"] > graphs["auto"]
    assert "DeepyTorch: Flux: attention: PyTorch SDPA" in deepy_log.text


def test_eager_branch_keeps_comfyui_attention(comfy, run):
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.attention as attention
    before = (attention.optimized_attention, getattr(flux_math, "optimized_attention", None))
    p = wf.flux_t2i(prefix="at_both", seed=6, accel=wf.accel_inputs(attention="sdpa"))
    p["30"] = dict(p["9"], inputs=dict(p["9"]["inputs"], model=["1", 0]))
    p["31"] = {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["3", 0]}}
    p["32"] = {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": "at_plain"}}
    out = run(p)
    assert (attention.optimized_attention, getattr(flux_math, "optimized_attention", None)) == before
    # the eager graph from the same loader runs no SDPA at all
    assert sdpa_ops(lambda: run(wf.flux_t2i(prefix="at_eager_only", seed=6), fresh=False)) == set()
    eager = comfy.image(run(wf.flux_t2i(prefix="at_e6", seed=6)), "11")
    assert np.array_equal(comfy.image(out, "32"), eager)
    assert np.abs(comfy.image(out, "11") - eager).max() <= TOL


def test_sdpa_with_eager_backend_where_comfyui_has_the_override(comfy, run):
    if not comfy.package.nodes.attention.has_override():
        pytest.skip("this ComfyUI has no optimized_attention_override: attention is switched only inside "
                    "compiled regions")
    ops = sdpa_ops(lambda: run(wf.flux_t2i(prefix="at_eb", accel=wf.accel_inputs("eager", attention="sdpa"))))
    assert ops, "SDPA should run for the model that asked for it"
