"""API-format prompts for the tiny models (the seed's file names). Node ids are strings, as ComfyUI expects."""
from devkit.tiny_models import NAMES

ACCEL_NODE = "DeepyTorchApplyDiffusionModel"


def accel_inputs(backend="inductor", mode="default", dynamic="auto", scope="regional", fullgraph=False,
                 attention="auto"):
    return {"backend": backend, "mode": mode, "dynamic": dynamic, "scope": scope, "fullgraph": fullgraph,
            "attention": attention}


def flux_t2i(seed=0, steps=2, width=64, height=64, lora=None, strength=1.0, accel=None, accel_before_lora=False,
             prefix="flux", batch=1, unet=NAMES["flux_unet"], weight_dtype="default", loras=None):
    """UNETLoader + DualCLIPLoader(flux) + KSampler + VAEDecode + SaveImage; optional LoRA and DeepyTorch node.
    `accel`: None, or the inputs of 'Apply DeepyTorch to diffusion model' (see accel_inputs); `loras`: [(name,
    strength)] stacked LoraLoaderModelOnly nodes (after `lora`)."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": NAMES["clip_l"], "clip_name2": NAMES["t5"],
                                                         "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": NAMES["flux_vae"]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny red fox", "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": prefix}},
    }
    model = ["1", 0]
    chain = []
    if lora:
        chain.append(("20", {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": lora,
                                                                             "strength_model": strength}}))
    for i, (name, s) in enumerate(loras or ()):
        chain.append((str(30 + i), {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": name,
                                                                                    "strength_model": s}}))
    if accel is not None:
        node = ("21", {"class_type": ACCEL_NODE, "inputs": dict(accel)})
        chain.insert(0 if accel_before_lora else len(chain), node)
    for node_id, node in chain:
        node["inputs"]["model"] = model
        p[node_id] = node
        model = [node_id, 0]
    p["9"] = {"class_type": "KSampler", "inputs": {"model": model, "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": seed, "steps": steps, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    return p


def sdxl_t2i(seed=0, steps=2, width=64, height=64, lora=None, strength=1.0, accel=None, prefix="sdxl"):
    """CheckpointLoaderSimple + KSampler (cfg 5) + VAEDecode + SaveImage; optional LoRA and DeepyTorch node."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES["sdxl"]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny red fox", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": prefix}},
    }
    model = ["1", 0]
    if lora:
        p["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora,
                                                                   "strength_model": strength}}
        model = ["20", 0]
    if accel is not None:
        p["21"] = {"class_type": ACCEL_NODE, "inputs": {"model": model, **accel}}
        model = ["21", 0]
    p["9"] = {"class_type": "KSampler", "inputs": {"model": model, "positive": ["4", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return p


VAE_NODE = "DeepyTorchApplyVAE"


def vae_inputs(backend="inductor", mode="default", dynamic="auto", parts="both"):
    return {"backend": backend, "mode": mode, "dynamic": dynamic, "parts": parts}


def save_latent(input_dir, name, tensor):
    """A fixed latent for LoadLatent (<input>/<name>.latent), as ComfyUI's SaveLatent writes it."""
    import os

    import torch
    from safetensors.torch import save_file
    save_file({"latent_tensor": tensor.contiguous(), "latent_format_version_0": torch.tensor([])},
              os.path.join(input_dir, name + ".latent"))
    return name + ".latent"


def vae_source(kind, source, accel=None):
    """Nodes "1" (the VAE's loader), "2" (`source`, the decode/encode input) and, with `accel`, "3" (Apply DeepyTorch
    to vae model). Returns (prompt, the VAE output to use)."""
    if kind == "flux":
        p, vae = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": NAMES["flux_vae"]}}}, ["1", 0]
    else:
        p, vae = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES["sdxl"]}}}, ["1", 2]
    p["2"] = source
    if accel is not None:
        p["3"] = {"class_type": VAE_NODE, "inputs": {"vae": vae, **accel}}
        vae = ["3", 0]
    return p, vae


def vae_decode(kind, latent, accel=None, tiled=None, prefix="vae"):
    """Loader -> [Apply DeepyTorch to vae model] -> VAEDecode(LoadLatent) -> SaveImage.
    `tiled`: None, or the inputs of VAEDecodeTiled beyond samples/vae."""
    p, vae = vae_source(kind, {"class_type": "LoadLatent", "inputs": {"latent": latent}}, accel)
    p["4"] = {"class_type": "VAEDecodeTiled" if tiled else "VAEDecode",
              "inputs": {**(tiled or {}), "samples": ["2", 0], "vae": vae}}
    p["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}}
    return p


def vae_encode(kind, image, accel=None, prefix="enc", tiled=None):
    """Loader -> [Apply DeepyTorch to vae model] -> VAEEncode(LoadImage) -> SaveLatent.
    `tiled`: None, or the inputs of VAEEncodeTiled beyond pixels/vae."""
    p, vae = vae_source(kind, {"class_type": "LoadImage", "inputs": {"image": image}}, accel)
    p["4"] = {"class_type": "VAEEncodeTiled" if tiled else "VAEEncode",
              "inputs": {**(tiled or {}), "pixels": ["2", 0], "vae": vae}}
    p["5"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": prefix}}
    return p
