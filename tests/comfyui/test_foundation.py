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


def test_tiny_clip_vision_reads_alike_through_comfyui_and_transformers(comfy):
    """The tiny clip_vision_l (XLabs' IP-adapter's image encoder): ComfyUI's loader (comfy.clip_vision.load, x-flux's
    fallback) builds it at the file's widths through the width shim, transformers (x-flux's first choice) from the
    tiny flux_clip_config.json beside it; both give the same image embeddings."""
    import importlib
    import os
    import pytest
    import torch
    from devkit.tiny_models import XFLUX_CLIP_CONFIG
    clip_vision = importlib.import_module("comfy.clip_vision")
    transformers = pytest.importorskip("transformers")
    path = comfy.paths["clip_vision"]
    image = torch.rand(1, 48, 56, 3, generator=torch.Generator().manual_seed(2))
    ours = clip_vision.load(path)
    assert ours.model.visual_projection.weight.shape == (16, 32)
    embeds = ours.encode_image(image)["image_embeds"].float()
    config = transformers.CLIPVisionConfig.from_pretrained(os.path.join(os.path.dirname(path), XFLUX_CLIP_CONFIG))
    hf = transformers.CLIPVisionModelWithProjection.from_pretrained(path, config=config, use_safetensors=True)
    with torch.no_grad():
        theirs = hf(pixel_values=clip_vision.clip_preprocess(image).float()).image_embeds
    assert embeds.shape == theirs.shape == (1, 16)
    # ComfyUI runs CLIP vision in its text-encoder dtype (float16 on CPU): float16 rounding over 24 layers
    assert (embeds - theirs).abs().max().item() <= 2e-2 * theirs.abs().max().item()
