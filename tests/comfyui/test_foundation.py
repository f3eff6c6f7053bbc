"""The harness runs the real ComfyUI on tiny real-format models, with this package loaded."""
import numpy as np

from devkit.tiny_models import NAMES
from harness import workflows as wf


def test_package_loaded_as_custom_node(comfy):
    import nodes
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["DeepyTorchApplyDiffusionModel"] == "Apply DeepyTorch to diffusion model"
    assert nodes.NODE_CLASS_MAPPINGS["DeepyTorchApplyDiffusionModel"].CATEGORY == "DeepyTorch"


def test_flux_text_to_image(comfy, run):
    img = comfy.image(run(wf.flux_t2i(prefix="f_base")), "11")
    assert img.shape == (64, 64, 3)
    assert img.std() > 5            # a real image, not a flat one


def test_flux_lora_changes_image(comfy, run):
    base = comfy.image(run(wf.flux_t2i(prefix="f_nolora")), "11")
    lora = comfy.image(run(wf.flux_t2i(prefix="f_lora", lora=NAMES["flux_lora"])), "11")
    assert np.abs(base - lora).max() > 10


def test_flux_seed_changes_image(comfy, run):
    a = comfy.image(run(wf.flux_t2i(seed=0, prefix="f_s0")), "11")
    b = comfy.image(run(wf.flux_t2i(seed=1, prefix="f_s1")), "11")
    assert np.abs(a - b).max() > 10


def test_sdxl_checkpoint(comfy, run):
    base = comfy.image(run(wf.sdxl_t2i(prefix="s_base")), "11")
    lora = comfy.image(run(wf.sdxl_t2i(prefix="s_lora", lora=NAMES["sdxl_lora"])), "11")
    assert base.shape == (64, 64, 3) and base.std() > 5
    assert np.abs(base - lora).max() > 10


def test_invalid_prompt_is_rejected_by_comfyui(run):
    import pytest
    p = wf.flux_t2i()
    p["1"]["inputs"]["unet_name"] = "missing.safetensors"
    with pytest.raises(RuntimeError, match="invalid prompt"):
        run(p)
