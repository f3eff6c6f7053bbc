"""Warm start from precompiled regions, through ComfyUI's real loaders, samplers and executor: a model accelerated
after this process forgot all its compiled code (dynamo reset, DeepyTorch's per-class compiled functions cleared:
what a new process starts without; the compile cache stays) starts from the artifacts an earlier compile saved, with
no dynamo tracing - read from dynamo's counter of compiled frames, counters["stats"]["unique_graphs"] - and no
inductor compile (counters["inductor"]["fxgraph_cache_miss"]), nothing baked (engine.precompiled.STATS).
tests/engine/test_precompiled.py starts real new processes."""
import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from devkit.tiny_models import NAMES
from harness import workflows as wf

from comfyui import sampler_helpers as sh

TOL = 1   # 1/255: float32 CPU, compiled vs eager


@pytest.fixture
def engine(comfy):
    return comfy.package.engine


@pytest.fixture
def new_process(engine):
    if not engine.precompiled.supported()[0]:
        pytest.skip(f"this torch has no precompiled route: {engine.precompiled.supported()[1]}")
    inductor = engine.backends.inductor

    def forget():
        torch._dynamo.reset()
        inductor._compiled_forward.cache_clear()
        inductor._precompiled_forward.cache_clear()
        counters.clear()
        return dict(engine.precompiled.STATS)
    return forget


def compiles(engine, before):
    """Everything that compiled since `before`: dynamo frames, inductor compiles, artifacts baked."""
    return {"dynamo_graphs": counters["stats"]["unique_graphs"],
            "inductor_compiles": counters["inductor"]["fxgraph_cache_miss"],
            "artifacts_compiled": engine.precompiled.STATS["bakes"] - before["bakes"]}


NONE = {"dynamo_graphs": 0, "inductor_compiles": 0, "artifacts_compiled": 0}


def test_flux_warm_start_lora_strength_and_a_new_resolution(comfy, run, engine, new_process):
    lora = dict(lora=NAMES["flux_lora"], accel_before_lora=True)
    ref = {s: comfy.image(run(wf.flux_t2i(prefix=f"w_e{s}", strength=s, **lora)), "11") for s in (1.0, 0.4)}
    run(wf.flux_t2i(prefix="w_cold", strength=1.0, accel=wf.accel_inputs(), **lora))   # compiles (or loads) + saves
    before = new_process()
    img = comfy.image(run(wf.flux_t2i(prefix="w_warm", strength=1.0, accel=wf.accel_inputs(), **lora)), "11")
    acc = engine.regional.latest("Flux")
    assert acc.start == "precompiled" and engine.precompiled.STATS["loads"] - before["loads"] == 2   # double, single
    assert compiles(engine, before) == NONE and acc.compiled_calls > 0
    assert np.abs(img - ref[1.0]).max() <= TOL
    # a LoRA strength change on the warm-started model: the new strength's image, nothing compiled or loaded
    counters.clear()
    loads = engine.precompiled.STATS["loads"]
    img = comfy.image(run(wf.flux_t2i(prefix="w_s04", strength=0.4, accel=wf.accel_inputs(), **lora),
                          fresh=False), "11")
    assert engine.regional.latest("Flux") is acc and acc.failed is None
    assert compiles(engine, before) == NONE and engine.precompiled.STATS["loads"] == loads
    assert np.abs(img - ref[0.4]).max() <= TOL and np.abs(img - ref[1.0]).max() > 10
    # a new resolution: recompiles (or loads another signature's artifact), no error, the eager image
    img = comfy.image(run(wf.flux_t2i(prefix="w_96", width=96, strength=0.4, accel=wf.accel_inputs(), **lora),
                          fresh=False), "11")
    eager = comfy.image(run(wf.flux_t2i(prefix="w_96e", width=96, strength=0.4, **lora)), "11")
    assert acc.failed is None and np.abs(img - eager).max() <= TOL


def test_sdxl_warm_start(comfy, run, engine, new_process):
    """SDXL: every region starts from precompiled artifacts, the SpatialTransformers' dynamic ones included (each UNet
    level passes other sizes; the weak dynamic mark on ComfyUI's noise schedule, which torch does not keep in a
    dynamic artifact, is set aside for them; blocks apart only in their ids share one through an alias), nothing
    compiled, and the store does not grow."""
    run(wf.sdxl_t2i(prefix="w_sx_cold", seed=4, accel=wf.accel_inputs()))
    store = engine.precompiled.store_dir()   # once the first accelerated model configured the compile cache
    for i in range(2):
        before, files = new_process(), set(os.listdir(store))
        img = comfy.image(run(wf.sdxl_t2i(prefix=f"w_sx_warm{i}", seed=4, accel=wf.accel_inputs())), "11")
        acc = engine.regional.latest("SDXL")
        assert acc.start == "precompiled" and compiles(engine, before) == NONE and acc.failed is None
        assert acc.start_counts["artifacts_loaded"] >= 5 and acc.start_counts["artifacts_ignored"] == 0
        # SpatialTransformers apart only in their block ids run one artifact (old code: one each)
        assert acc.start_counts["artifacts_shared"] >= 4, acc.start_counts
        # the files this model's regions used (loaded, or baked and saved) were all there before: nothing written
        # (the store is shared with the suite's other runs, which may write theirs meanwhile)
        used = {os.path.basename(p) for fn in acc.compiled.values()
                for p in getattr(getattr(fn, "__func__", fn), "loaded_paths", ())}
        assert len(used) >= 5 and used <= files, ("a warm start must not write new artifacts", used - files)
    eager = comfy.image(run(wf.sdxl_t2i(prefix="w_sx_e", seed=4)), "11")
    assert np.abs(img - eager).max() <= TOL


def test_vae_decode_warm_start(comfy, run, engine, new_process):
    latent = wf.save_latent(comfy.input_dir, "warm_flux_vae", torch.randn(1, 16, 8, 8,
                                                                          generator=torch.Generator().manual_seed(7)))
    run(wf.vae_decode("flux", latent, accel=wf.vae_inputs(parts="decoder"), prefix="w_vc"))
    before = new_process()
    img = comfy.image(run(wf.vae_decode("flux", latent, accel=wf.vae_inputs(parts="decoder"), prefix="w_vw")), "5")
    acc = engine.regional.latest()
    assert acc.label.startswith("VAE") and acc.start == "precompiled" and compiles(engine, before) == NONE
    eager = comfy.image(run(wf.vae_decode("flux", latent, prefix="w_ve")), "5")
    assert np.abs(img - eager).max() <= TOL


def test_deeptorch_sampler_warm_start(comfy, run, engine, new_process):
    p = sh.graph(accel=wf.accel_inputs(), prefix="w_xs", seed=3, steps=2)
    run(p)
    before = new_process()
    warm = sh.saved_latent(comfy.output_dir, run(sh.graph(accel=wf.accel_inputs(), prefix="w_xs2", seed=3, steps=2)))
    acc = engine.regional.latest("Flux")
    assert acc.start == "precompiled" and compiles(engine, before) == NONE and acc.compiled_calls > 0
    eager = sh.saved_latent(comfy.output_dir, run(sh.graph(prefix="w_xs3", seed=3, steps=2)))
    assert (warm - eager).abs().max() <= 1e-3 * eager.abs().max()   # as the sampler's compiled-vs-eager tests
