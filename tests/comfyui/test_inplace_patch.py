"""The runtime patch: ModelPatcher weight_inplace_update=True for diffusion models from ComfyUI's loaders."""
import logging
import os

import numpy as np
import pytest
import torch

from devkit.tiny_models import NAMES
from harness import workflows as wf


@pytest.fixture
def inplace(comfy):
    """The package's patch module; the patch is applied again after each test, whatever the test did."""
    mod = comfy.package.patches.inplace_update
    yield mod
    os.environ.pop(mod.ENV_OPT_OUT, None)
    mod.unpatch()
    mod.patch()


def load(kind):
    import nodes
    if kind == "flux":
        return nodes.UNETLoader().load_unet(NAMES["flux_unet"], "default")[0]
    return nodes.CheckpointLoaderSimple().load_checkpoint(NAMES["sdxl"])[0]


def sample(comfy, model, kind, seed=0):
    """A real KSampler run on `model` (conditioning from the real text encoders)."""
    import nodes
    if kind == "flux":
        clip = nodes.DualCLIPLoader().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
        latent = {"samples": torch.zeros(1, 16, 8, 8)}
        cfg, sched = 1.0, "simple"
    else:
        clip = nodes.CheckpointLoaderSimple().load_checkpoint(NAMES["sdxl"])[1]
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        cfg, sched = 5.0, "normal"
    pos = nodes.CLIPTextEncode().encode(clip, "a tiny red fox")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    return nodes.KSampler().sample(model, seed, 2, cfg, "euler", sched, pos, neg, latent)[0]["samples"]


@pytest.mark.parametrize("kind,lora", [("flux", "flux_lora"), ("sdxl", "sdxl_lora")])
def test_lora_lands_in_the_same_tensors_and_unpatch_restores_them(comfy, inplace, kind, lora):
    import comfy.utils
    import nodes
    base = load(kind)
    assert base.weight_inplace_update is True
    patched = nodes.LoraLoaderModelOnly().load_lora_model_only(base, NAMES[lora], 1.0)[0]
    keys = sorted(patched.patches)
    assert len(keys) >= 4
    before = {k: comfy.utils.get_attr(base.model, k) for k in keys}
    snapshot = {k: (t.data_ptr(), t.detach().clone()) for k, t in before.items()}
    sample(comfy, patched, kind)
    for k in keys:
        now = comfy.utils.get_attr(patched.model, k)
        assert now.data_ptr() == snapshot[k][0], f"{k}: LoRA replaced the tensor instead of updating it in place"
        assert not torch.equal(now, snapshot[k][1]), f"{k}: LoRA did not change the weight"
    patched.unpatch_model()
    for k in keys:
        now = comfy.utils.get_attr(base.model, k)
        assert now.data_ptr() == snapshot[k][0]
        assert torch.equal(now, snapshot[k][1]), f"{k}: base weight not restored bit-exactly"


def test_stock_comfyui_replaces_the_tensors(comfy, inplace):
    """Why the patch exists: without it, LoRA patching swaps the parameter objects."""
    import comfy.utils
    import nodes
    inplace.unpatch()
    base = load("flux")
    assert base.weight_inplace_update is False
    patched = nodes.LoraLoaderModelOnly().load_lora_model_only(base, NAMES["flux_lora"], 1.0)[0]
    k = sorted(patched.patches)[0]
    ptr = comfy.utils.get_attr(base.model, k).data_ptr()
    sample(comfy, patched, "flux")
    assert comfy.utils.get_attr(patched.model, k).data_ptr() != ptr
    patched.unpatch_model()


@pytest.mark.parametrize("graph", ["flux", "sdxl"])
def test_images_equal_stock_comfyui_for_two_strengths(comfy, run, inplace, graph):
    make = wf.flux_t2i if graph == "flux" else wf.sdxl_t2i
    lora = NAMES["flux_lora"] if graph == "flux" else NAMES["sdxl_lora"]
    ours = {s: comfy.image(run(make(prefix=f"ip_{graph}{s}", lora=lora, strength=s), fresh=False), "11")
            for s in (1.0, 0.5)}
    inplace.unpatch()
    stock = {s: comfy.image(run(make(prefix=f"st_{graph}{s}", lora=lora, strength=s)), "11") for s in (1.0, 0.5)}
    for s in (1.0, 0.5):
        assert np.abs(ours[s] - stock[s]).max() <= 1, f"strength {s}"
    assert np.abs(ours[1.0] - ours[0.5]).max() > 10


def test_patch_is_idempotent_reversible_and_logged_once(comfy, inplace, caplog):
    import comfy.model_patcher
    import comfy.sd
    inplace.unpatch()
    originals = {name: getattr(comfy.sd, name) for name in inplace.LOADERS}
    init = comfy.model_patcher.ModelPatcher.__init__
    caplog.set_level(logging.INFO, logger="deepytorch")
    assert inplace.patch() == list(inplace.LOADERS)
    wrapped = {name: getattr(comfy.sd, name) for name in inplace.LOADERS}
    assert inplace.patch() == list(inplace.LOADERS)             # twice = once
    for name in inplace.LOADERS:
        assert getattr(comfy.sd, name) is wrapped[name]
        assert wrapped[name].deepytorch_inplace_original is originals[name]
    lines = [r.getMessage() for r in caplog.records if "in-place weight update enabled" in r.getMessage()]
    assert lines == ["DeepyTorch: in-place weight update enabled for diffusion models from "
                     "comfy.sd.load_diffusion_model_state_dict, comfy.sd.load_state_dict_guess_config"]
    inplace.unpatch()
    for name in inplace.LOADERS:
        assert getattr(comfy.sd, name) is originals[name]
    assert comfy.model_patcher.ModelPatcher.__init__ is init      # the class itself is never touched


def test_opt_out_env_var_leaves_comfyui_untouched(comfy, inplace):
    import comfy.sd
    inplace.unpatch()
    originals = {name: getattr(comfy.sd, name) for name in inplace.LOADERS}
    os.environ[inplace.ENV_OPT_OUT] = "0"
    assert inplace.patch() == []
    for name in inplace.LOADERS:
        assert getattr(comfy.sd, name) is originals[name]
    assert load("flux").weight_inplace_update is False


def test_node_sets_the_flag_even_when_the_global_patch_is_off(comfy, inplace):
    import nodes
    inplace.unpatch()
    base = load("flux")
    node = nodes.NODE_CLASS_MAPPINGS["DeepyTorchApplyDiffusionModel"]()
    accelerated = node.apply(base, "eager", "default", "auto", "regional", False, "auto")[0]
    assert base.weight_inplace_update is False and accelerated.weight_inplace_update is True
