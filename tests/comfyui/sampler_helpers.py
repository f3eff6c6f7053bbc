"""Shared by test_sampler.py and test_sampler_xflux_parity.py: the "DeepTorch Sampler to replace XlabsSampler"
graphs (tiny FLUX model, text encoders, FluxGuidance, a latent, sampler(s) -> SaveLatent), the saved latents, the
fixed image-to-image latent, the model + conditionings loaded with ComfyUI's own nodes, and our node called
directly."""
import os
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from devkit.tiny_models import NAMES
from harness import workflows as wf

NODE = "DeepTorchXlabsSampler"
I2I_LATENT = "deepytorch_sampler_i2i.latent"
GUIDANCE = 3.5


# -- graphs ----------------------------------------------------------------------------------------------------
def sampler_inputs(seed=0, steps=4, cfg_start=20, true_gs=3.0, i2i=0.0, denoise=1.0):
    return {"noise_seed": seed, "steps": steps, "timestep_to_start_cfg": cfg_start, "true_gs": true_gs,
            "image_to_image_strength": i2i, "denoise_strength": denoise}


def graph(samplers=(NODE,), latent="empty4", width=64, height=64, batch=1, accel=None, prefix="xs", **kw):
    """UNETLoader + FLUX text encoders + FluxGuidance + a latent + sampler(s) -> SaveLatent (node '<sampler id>0').
    latent: 'empty4' (EmptyLatentImage, as XLabs' workflows), 'empty16' (EmptySD3LatentImage), 'i2i' (LoadLatent of
    I2I_LATENT), None (not connected)."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAMES["flux_unet"], "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": NAMES["clip_l"], "clip_name2": NAMES["t5"],
                                                         "type": "flux"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny red fox", "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": GUIDANCE}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 0]}},
    }
    if latent == "empty4":
        p["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    elif latent == "empty16":
        p["7"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height,
                                                                  "batch_size": batch}}
    elif latent == "i2i":
        p["7"] = {"class_type": "LoadLatent", "inputs": {"latent": I2I_LATENT}}
    model = ["1", 0]
    if accel is not None:
        p["21"] = {"class_type": wf.ACCEL_NODE, "inputs": {"model": model, **accel}}
        model = ["21", 0]
    for i, cls in enumerate(samplers):
        nid = str(9 + 10 * i)
        inputs = {"model": model, "conditioning": ["5", 0], "neg_conditioning": ["6", 0], **sampler_inputs(**kw)}
        if latent is not None:
            inputs["latent_image"] = ["7", 0]
        p[nid] = {"class_type": cls, "inputs": inputs}
        p[nid + "0"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0],
                                                               "filename_prefix": f"{prefix}_{cls}"}}
    return p


def saved_latent(output_dir, entry, node="90"):
    f = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(output_dir, f["subfolder"], f["filename"]))["latent_tensor"]


def i2i_latent():
    """A fixed 16-channel latent (seeded), in ComfyUI's latent space."""
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(42)) * 0.5


def write_i2i_latent(input_dir):
    save_file({"latent_tensor": i2i_latent(), "latent_format_version_0": torch.tensor([])},
              os.path.join(input_dir, I2I_LATENT))


# -- the model and the conditionings (ComfyUI's own nodes); our node called directly ---------------------------
@pytest.fixture(scope="module")
def parts(comfy):
    """The tiny FLUX model and the two conditionings, loaded with ComfyUI's own node classes."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    model = n["UNETLoader"]().load_unet(NAMES["flux_unet"], "default")[0]
    clip = n["DualCLIPLoader"]().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
    enc = n["CLIPTextEncode"]()
    pos = enc.encode(clip, "a tiny red fox")[0]
    neg = enc.encode(clip, "blurry")[0]
    pos = [[pos[0][0], dict(pos[0][1], guidance=GUIDANCE)]]   # what FluxGuidance does
    return types.SimpleNamespace(model=model, pos=pos, neg=neg)


def sample_direct(comfy, parts, model=None, pos=None, neg=None, latent=None, controlnet_condition=None, **kw):
    """Our node called directly (for inputs no stock node makes: batched conditionings, 5-D latents, XLabs blocks)."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    model = parts.model if model is None else model
    pos = parts.pos if pos is None else pos
    neg = parts.neg if neg is None else neg
    latent = {"samples": torch.zeros(1, 4, 8, 8)} if latent is None else latent
    return n[NODE]().sampling(model, pos, neg, latent_image=latent, controlnet_condition=controlnet_condition,
                              **sampler_inputs(**kw))[0]["samples"]
