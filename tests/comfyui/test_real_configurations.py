"""What users run beyond one float32 model with one LoRA, through ComfyUI's real loaders, ModelPatcher, KSampler and
executor: fp8 weights (UNETLoader's weight_dtype, a file stored in fp8), stacked LoRAs, switching models and
workflows in one process. Every image is compared with eager ComfyUI's for the same settings; "compiled nothing"
counts dynamo frames (counters["stats"]["unique_graphs"]) and precompiled artifacts baked or loaded."""
import gc
import weakref

import numpy as np
import psutil
import pytest
import torch
from torch._dynamo.utils import counters

from devkit.tiny_models import NAMES
from harness.counting import compiled_since
from harness import workflows as wf

TOL = 1   # 1/255: float32 compute on CPU, compiled vs eager


@pytest.fixture
def engine(comfy):
    return comfy.package.engine


def weight(model_patcher, key):
    import comfy.utils
    return comfy.utils.get_attr(model_patcher.model, key)


def loaded_flux():
    import comfy.model_management as mm
    found = [m.model for m in mm.current_loaded_models if type(getattr(m.model.model, "diffusion_model", None)).__name__ == "Flux"]
    assert found, "a FLUX model should be loaded after sampling"
    return found[0]   # ComfyUI keeps the most recently used model first


LORA_KEY = "diffusion_model.double_blocks.0.img_attn.qkv.weight"   # a weight every test LoRA here patches
FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@pytest.mark.parametrize("weight_dtype,unet", [("fp8_e4m3fn", "flux_unet"), ("fp8_e4m3fn_fast", "flux_unet"),
                                               ("fp8_e5m2", "flux_unet"), ("default", "flux_unet_fp8")])
def test_fp8_weights_with_a_lora_match_eager_keep_their_tensors_and_swap_strength_without_compiling(
        comfy, run, engine, weight_dtype, unet):
    """ComfyUI stores the weights in fp8 and, on CPU, computes in float32 (its manual-cast ops); a LoRA is applied to
    the fp8 weights with its stochastic rounding (seeded per key, so eager and compiled get the same weights)."""
    import nodes
    if weight_dtype not in nodes.UNETLoader.INPUT_TYPES()["required"]["weight_dtype"][0]:
        pytest.skip(f"this ComfyUI's UNETLoader has no weight_dtype {weight_dtype}")
    kw = dict(unet=NAMES[unet], weight_dtype=weight_dtype, lora=NAMES["flux_lora"])
    ref = {s: comfy.image(run(wf.flux_t2i(prefix=f"fp8e_{weight_dtype}{s}", strength=s, **kw)), "11")
           for s in (1.0, 0.4)}
    assert np.abs(ref[1.0] - ref[0.4]).max() > 10                      # the strength matters
    img = comfy.image(run(wf.flux_t2i(prefix=f"fp8c_{weight_dtype}", strength=1.0, accel=wf.accel_inputs(), **kw)),
                      "11")
    acc = engine.regional.latest("Flux")
    assert acc.failed is None and acc.compiled_calls == 2 * 4          # 2 steps x 4 blocks, compiled
    assert np.abs(img - ref[1.0]).max() <= TOL
    model = loaded_flux()
    w = weight(model, LORA_KEY)
    assert w.dtype == model.model.get_dtype()                         # patched in the dtype ComfyUI stores
    if weight_dtype in FP8:
        assert w.dtype == FP8[weight_dtype]
    # (a file stored in fp8 with weight_dtype default: ComfyUI picks its storage dtype for the device itself; on
    # CPU that is float32)
    ptr = w.data_ptr()
    counters.clear()
    before = dict(engine.precompiled.STATS)
    img = comfy.image(run(wf.flux_t2i(prefix=f"fp8s_{weight_dtype}", strength=0.4, accel=wf.accel_inputs(), **kw),
                          fresh=False), "11")
    assert np.abs(img - ref[0.4]).max() <= TOL
    assert compiled_since(engine, before) == 0, "a LoRA strength swap on fp8 weights must not compile"
    assert weight(loaded_flux(), LORA_KEY).data_ptr() == ptr, "the LoRA must update the fp8 weight in place"


def test_stacked_loras_match_eager_strength_changes_compile_nothing_and_removing_them_gives_the_base_image(
        comfy, run, engine):
    """Three LoraLoaderModelOnly in a row after the DeepyTorch node; 20 strength changes of the last one: nothing
    compiles, host memory (RSS) grows by at most 50 MiB between the 2nd and the 20th change."""
    def stack(s, **k):
        return wf.flux_t2i(lora=NAMES["flux_lora"], strength=1.0, loras=[(NAMES["flux_lora_b"], 0.8),
                                                                          (NAMES["flux_lora_c"], s)], **k)
    base = comfy.image(run(wf.flux_t2i(prefix="st_base")), "11")
    ref = {s: comfy.image(run(stack(s, prefix=f"st_e{s}")), "11") for s in (0.6, 0.05)}
    assert np.abs(ref[0.6] - base).max() > 10 and np.abs(ref[0.6] - ref[0.05]).max() > 3
    img = comfy.image(run(stack(0.6, prefix="st_c", accel=wf.accel_inputs(), accel_before_lora=True)), "11")
    assert np.abs(img - ref[0.6]).max() <= TOL
    acc = engine.regional.latest("Flux")
    counters.clear()
    before = dict(engine.precompiled.STATS)
    rss = []
    strengths = [round(0.6 - 0.05 * i, 2) for i in range(1, 12)] + [round(0.1 + 0.05 * i, 2) for i in range(8)] + [0.05]
    assert len(strengths) == 20
    for i, s in enumerate(strengths):
        out = run(stack(s, prefix=f"st_s{i}", accel=wf.accel_inputs(), accel_before_lora=True), fresh=False)
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
    assert np.abs(comfy.image(out, "11") - ref[0.05]).max() <= TOL
    assert compiled_since(engine, before) == 0, "strength changes of a stacked LoRA must not compile"
    assert engine.regional.latest("Flux") is acc and acc.failed is None and acc.recompiles == 0
    grew = (rss[-1] - rss[1]) / 2**20
    print(f"RSS growth between the 2nd and the 20th strength change: {grew:.1f} MiB")
    assert grew <= 50, f"host memory grew by {grew:.1f} MiB over 18 strength changes"
    # the same graph without the LoRAs: the base model's image again
    img = comfy.image(run(wf.flux_t2i(prefix="st_none", accel=wf.accel_inputs()), fresh=False), "11")
    assert np.abs(img - base).max() <= TOL


def merged(*prompts):
    """One API prompt holding every given prompt, node ids prefixed (a, b, ...) so they do not collide."""
    out = {}
    for tag, p in zip("abcdef", prompts):
        for node_id, node in p.items():
            inputs = {k: [tag + v[0], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            out[tag + node_id] = dict(node, inputs=inputs)
    return out


def test_switching_models_and_workflows_gives_each_model_its_own_image_and_releases_unloaded_ones(comfy, run, engine):
    """FLUX-dev -> FLUX-schnell -> FLUX-dev and FLUX <-> SDXL in one process, then FLUX and SDXL accelerated in one
    graph; each image within 1/255 of its eager run. A model ComfyUI unloaded is released: a weak reference to its
    compiled state and to its diffusion model is dead after garbage collection (nothing process-wide holds it)."""
    import comfy.model_management as mm
    schnell = dict(unet=NAMES["flux_schnell"])
    eager = {"dev": comfy.image(run(wf.flux_t2i(prefix="sw_e_dev")), "11"),
             "schnell": comfy.image(run(wf.flux_t2i(prefix="sw_e_sch", **schnell)), "11"),
             "sdxl": comfy.image(run(wf.sdxl_t2i(prefix="sw_e_sdxl")), "11")}
    assert np.abs(eager["dev"] - eager["schnell"]).max() > 10
    prompts = {"dev": lambda prefix: wf.flux_t2i(prefix=prefix, accel=wf.accel_inputs()),
               "schnell": lambda prefix: wf.flux_t2i(prefix=prefix, accel=wf.accel_inputs(), **schnell),
               "sdxl": lambda prefix: wf.sdxl_t2i(prefix=prefix, accel=wf.accel_inputs())}
    for i, name in enumerate(["dev", "schnell", "dev", "sdxl", "dev", "sdxl"]):
        img = comfy.image(run(prompts[name](f"sw_{i}_{name}"), fresh=False), "11")
        assert np.abs(img - eager[name]).max() <= TOL, f"switch {i}: {name}"
        acc = engine.regional.latest()
        assert acc.failed is None and acc.compiled_calls > 0, f"switch {i}: {name} ran eager"
    both = run(merged(prompts["dev"]("sw_both_f"), prompts["sdxl"]("sw_both_s")), fresh=False)
    assert np.abs(comfy.image(both, "a11") - eager["dev"]).max() <= TOL
    assert np.abs(comfy.image(both, "b11") - eager["sdxl"]).max() <= TOL
    # a model ComfyUI unloads (a new workflow, its cache reset) leaves nothing behind
    run(wf.flux_t2i(prefix="sw_rel", accel=wf.accel_inputs(), **schnell))
    acc, diffusion = weakref.ref(engine.regional.latest("Flux")), weakref.ref(loaded_flux().model.diffusion_model)
    run(wf.sdxl_t2i(prefix="sw_after"))        # fresh: ComfyUI's cache no longer holds the schnell graph's outputs
    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()
    assert acc() is None, f"the compiled state of an unloaded model is still referenced: {gc.get_referrers(acc())}"
    assert diffusion() is None, "the diffusion model ComfyUI unloaded is still referenced"


GLOBAL_STATE_PROBE = r'''
import json, os, sys, tempfile
sys.path[:0] = [os.path.join(ROOT, "dev"), os.path.join(ROOT, "tests")]
import torch
from devkit.comfy_boot import Comfy
from devkit import tiny_models
from harness import workflows as wf
from harness.server import TESTPACK
c = Comfy(COMFY, tempfile.mkdtemp(), packs=[("deepytorch_testpack", TESTPACK)])   # (tiny widths)
tiny_models.generate(c.models_dir)
import comfy.ldm.modules.attention as attention


def state():
    def plain(d):
        return {k: repr(v) for k, v in d.items()}
    return {"env": dict(os.environ),
            "dynamo": plain(torch._dynamo.config.get_config_copy()),
            "inductor": plain(torch._inductor.config.get_config_copy()),
            "functorch": plain(torch._functorch.config.get_config_copy()),
            "torch": {"threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
                      "grad": torch.is_grad_enabled(), "matmul": torch.get_float32_matmul_precision(),
                      "deterministic": torch.are_deterministic_algorithms_enabled()},
            "comfy_attention": {k: getattr(getattr(attention, k, None), "__qualname__", None)
                                for k in ("optimized_attention", "optimized_attention_masked")}}


before = state()
p = wf.flux_t2i(prefix="gs", accel=wf.accel_inputs())
p["12"] = {"class_type": wf.VAE_NODE, "inputs": {"vae": ["3", 0], **wf.vae_inputs()}}
p["10"]["inputs"]["vae"] = ["12", 0]
c.run(p)
after = state()
print("STATE " + json.dumps({part: {k: [before[part].get(k), after[part].get(k)]
                                     for k in set(before[part]) | set(after[part])
                                     if before[part].get(k) != after[part].get(k)} for part in before}))
'''


def test_a_first_accelerated_run_changes_no_global_state_beyond_what_the_readme_lists(comfy):
    """A new process (booted ComfyUI with this pack loaded), then its first accelerated FLUX + VAE run: torch's
    dynamo / inductor / functorch config, threads, default dtype, grad mode, matmul precision and ComfyUI's
    attention functions are as before, and so is the environment (the README lists the variables the compile cache
    sets where the user set no TORCHINDUCTOR_CACHE_DIR: tests/engine/test_compile_cache.py)."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"ROOT = {root!r}\nCOMFY = {comfy.comfy_dir!r}\n" + GLOBAL_STATE_PROBE
    # the test run's own TORCHINDUCTOR_CACHE_DIR and compile cache (warm: seconds, not a cold compile); a user's
    # TORCHINDUCTOR_CACHE_DIR is kept, so the environment must not change at all
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") and os.environ.get("DEEPYTORCH_CACHE_DIR")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                         timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("STATE ")), None)
    assert line, out.stdout[-2000:] + out.stderr[-4000:]
    changed = json.loads(line[len("STATE "):])
    # (inductor itself sets private variables, _TORCHINDUCTOR_*)
    assert {k: v for k, v in changed["env"].items() if not k.startswith("_TORCHINDUCTOR")} == {}
    assert {part: diff for part, diff in changed.items() if part != "env" and diff} == {}


class ReplacedBlock(torch.nn.Module):
    """What another node installs with add_object_patch in place of a FLUX double block: the block, its image
    stream scaled (a visible change)."""

    def __init__(self, block):
        super().__init__()
        self.inner = block

    def forward(self, *args, **kwargs):
        img, txt = type(self.inner).forward(self.inner, *args, **kwargs)
        return img * 0.8, txt


class ScaledPart(torch.nn.Module):
    """A part inside a block replaced by another node (as XLabs replaces `double_blocks.N.processor`)."""

    def __init__(self, part):
        super().__init__()
        self.inner = part

    def forward(self, x):
        return self.inner(x) * 1.3


def sample_image(model, seed=0):
    """KSampler + VAEDecode called directly (ComfyUI's real nodes, no executor): the decoded image as HxWx3 ints."""
    import nodes
    clip = nodes.DualCLIPLoader().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
    vae = nodes.VAELoader().load_vae(NAMES["flux_vae"])[0]
    pos = nodes.CLIPTextEncode().encode(clip, "a tiny red fox")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    with torch.inference_mode():   # as ComfyUI's executor runs nodes
        samples = nodes.KSampler().sample(model, seed, 2, 1.0, "euler", "simple", pos, neg, latent)[0]
        pixels = nodes.VAEDecode().decode(vae, samples)[0][0]
    return np.clip(255.0 * pixels.numpy(), 0, 255).astype(int)


def test_blocks_other_nodes_replaced_are_respected_and_do_not_leak(comfy, engine, deepy_log):
    """A block another node replaced (object patch on double_blocks.0) stays the other node's, said in the log; a
    part replaced inside a block (double_blocks.1.img_mod.lin) is compiled with the block; the loader's model and
    an unpatched branch keep the plain image."""
    import nodes
    base = nodes.UNETLoader().load_unet(NAMES["flux_unet"], "default")[0]
    plain = sample_image(base)
    patched = base.clone()
    dm = base.model.diffusion_model
    patched.add_object_patch("diffusion_model.double_blocks.0", ReplacedBlock(dm.double_blocks[0]))
    patched.add_object_patch("diffusion_model.double_blocks.1.img_mod.lin", ScaledPart(dm.double_blocks[1].img_mod.lin))
    eager = sample_image(patched)
    assert np.abs(eager - plain).max() > 10                     # the other node's patches show
    node = comfy.package.nodes.diffusion.ApplyDeepyTorchDiffusionModel()
    accelerated = node.apply(patched, "inductor", "default", "auto", "regional", False, "auto")[0]
    img = sample_image(accelerated)
    acc = engine.regional.latest("Flux")
    assert sorted(acc.compiled) == ["double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert acc.failed is None and acc.compiled_calls == 2 * 3
    assert np.abs(img - eager).max() <= TOL
    assert ("DeepyTorch: Flux: 1 region(s) left as another node replaced them, not compiled: double_blocks.0 "
            "(object patch 'diffusion_model.double_blocks.0')") in deepy_log.text
    assert np.abs(sample_image(base) - plain).max() == 0        # nothing leaked into the loader's model


def flux_call_inputs(dm, seed=0):
    """Inputs of one FLUX model call as ComfyUI's sampler makes them (latent, sigma, T5 context, pooled CLIP,
    guidance), random at the tiny model's widths."""
    g = torch.Generator().manual_seed(seed)
    kw = {"c_crossattn": torch.randn(1, 16, dm.txt_in.in_features, generator=g),
          "y": torch.randn(1, dm.vector_in.in_layer.in_features, generator=g)}
    if dm.params.guidance_embed:
        kw["guidance"] = torch.tensor([3.5])
    return torch.randn(1, 16, 8, 8, generator=g), kw


def offloaded_regions(dm):
    """The blocks with a layer ComfyUI's partial load left on the offload device (it marks those layers)."""
    blocks = [f"{c}.{i}" for c in ("double_blocks", "single_blocks") for i in range(len(getattr(dm, c)))]
    return [p for p in blocks if any("prev_comfy_cast_weights" in m.__dict__ for m in dm.get_submodule(p).modules())]


def partially_loaded_outputs(patcher, budget, sigmas=(1.0, 0.5)):
    """The model's output at each sigma with ComfyUI's own partial load in effect: ModelPatcher.patch_model with
    `lowvram_model_memory` (what load_models_gpu does when VRAM is short; on CPU ComfyUI always loads fully, so it is
    driven directly), then the real BaseModel.apply_model. Returns (outputs, offloaded regions)."""
    x, kw = flux_call_inputs(patcher.model.diffusion_model)
    with torch.inference_mode():   # as ComfyUI's sampler loads and runs the model
        patcher.patch_model(device_to=patcher.load_device, lowvram_model_memory=budget)
        try:
            offloaded = offloaded_regions(patcher.model.diffusion_model)
            outs = [patcher.model.apply_model(x, torch.tensor([s]), **kw).clone() for s in sigmas]
        finally:
            patcher.unpatch_model(device_to=patcher.offload_device)
    return outs, offloaded


def test_partially_loaded_blocks_run_eager_named_in_the_log_and_compiled_again_once_fully_loaded(
        comfy, engine, deepy_log):
    """ComfyUI's low-VRAM partial load (a budget of 80% of the model: some layers of both double blocks stay on the
    offload device, cast and LoRA-patched on every call by ComfyUI's LowVramPatch) + a LoRA: the partially loaded
    blocks run eager on purpose (one log line names them), the fully loaded ones compiled; outputs within 1/255 of
    the output scale of eager ComfyUI with the same partial load; a LoRA strength change and the later full load
    compile nothing new beyond the blocks' first compile, and the fully loaded model matches eager too."""
    import nodes
    with torch.inference_mode():   # loaded as ComfyUI's executor loads it: its weights are inference tensors
        base = nodes.UNETLoader().load_unet(NAMES["flux_unet"], "default")[0]
    node = comfy.package.nodes.diffusion.ApplyDeepyTorchDiffusionModel()
    budget = int(base.model_size() * 0.8)
    first = None
    for i, strength in enumerate((1.0, 0.4)):
        with torch.inference_mode():
            lora = nodes.LoraLoaderModelOnly().load_lora_model_only(base, NAMES["flux_lora"], strength)[0]
        eager, offloaded = partially_loaded_outputs(lora, budget)
        assert offloaded == ["double_blocks.0", "double_blocks.1"], offloaded   # a mix: the test means something
        if i:   # the LoRA is in effect, patched on the fly in the offloaded layers
            assert (eager[0] - first).abs().max() > 1e-3
        first = eager[0]
        accelerated = node.apply(lora, "inductor", "default", "auto", "regional", False, "auto")[0]
        counters.clear()
        before = dict(engine.precompiled.STATS)
        outs, _ = partially_loaded_outputs(accelerated, budget)
        acc = engine.regional.latest("Flux")
        assert acc.failed is None
        assert acc.offloaded == {"double_blocks.0", "double_blocks.1"}
        assert (acc.offloaded_calls, acc.compiled_calls) == (2 * 2, 2 * 2)    # 2 calls x (2 eager, 2 compiled)
        assert sorted(acc.compiled) == ["single_blocks.0", "single_blocks.1"]
        for out, ref in zip(outs, eager):
            assert (out - ref).abs().max() <= ref.abs().max() / 255
        if i:
            assert compiled_since(engine, before) == 0, "the second strength must not compile the loaded blocks again"
        assert acc.recompiles == 0
    assert ("DeepyTorch: Flux: 2 of 4 region(s) partially loaded by ComfyUI (low-VRAM: some of their weights stay on "
            "the offload device and are cast, LoRA included, on every call): they run eager while so, the others "
            "compiled: double_blocks.0, double_blocks.1") in deepy_log.text
    # the same model fully loaded (no budget): every block compiled, the double blocks for the first time
    eager, offloaded = partially_loaded_outputs(lora, 0)
    assert offloaded == []
    outs, _ = partially_loaded_outputs(accelerated, 0)
    assert acc.offloaded == set() and sorted(acc.compiled) == [
        "double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert acc.compiled_calls == 2 * 2 + 2 * 4 and acc.recompiles == 0 and acc.failed is None
    for out, ref in zip(outs, eager):
        assert (out - ref).abs().max() <= ref.abs().max() / 255


def test_sdxl_blocks_sharing_an_artifact_keep_their_own_attention_patches(comfy, run, engine):
    """SpatialTransformers whose calls differ only in their block id share one precompiled artifact (see
    engine/precompiled.py). ComfyUI's PerturbedAttentionGuidance replaces the middle block's self-attention, on an
    extra call of each step, through a patch keyed by block id: no block may run another block's patch or miss its
    own. The image matches eager ComfyUI's with the same node."""
    def graph(prefix, accel=None):
        p = wf.sdxl_t2i(prefix=prefix, seed=5, accel=accel)
        p["30"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": p["9"]["inputs"]["model"],
                                                                           "scale": 3.0}}
        p["9"]["inputs"]["model"] = ["30", 0]
        return p
    eager = comfy.image(run(graph("pag_e")), "11")
    plain = comfy.image(run(wf.sdxl_t2i(prefix="pag_plain", seed=5)), "11")
    img = comfy.image(run(graph("pag_a", wf.accel_inputs())), "11")
    acc = engine.regional.latest("SDXL")
    assert acc.failed is None and acc.compiled_calls > 0
    shared = [e for fn in acc.compiled.values() for e in getattr(getattr(fn, "__func__", fn), "entries", ())
              if e.shares]
    assert shared, "no SpatialTransformer ran another block's artifact"
    assert np.abs(img - eager).max() <= TOL and np.abs(eager - plain).max() > 1   # the patch changes the image
