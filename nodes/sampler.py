"""DeepTorch Sampler to replace XlabsSampler: XLabs' FLUX sampler (same inputs, same latents) on ComfyUI's model.

The math (schedule, noise, packing, Euler with true CFG, image-to-image start) is engine.flux_sampling; this file
is the ComfyUI glue: the model is loaded with load_models_gpu (so object patches, e.g. DeepyTorch's compiled blocks
or XLabs' LoRA processors, are in place), called through nodes.flux_model_call, with ComfyUI's progress bar, latent
preview and Cancel.
"""
import contextlib

import torch

import comfy.model_management as mm
import latent_preview

from ..engine import flux_sampling as fs
from ..engine import log
from .common import CATEGORY
from . import xlabs_controlnet
from .flux_model_call import FluxCall, ip_scales_as_tensors, is_flux
from .step_cache import own_patches, step_cache_of

NODE = "DeepTorch Sampler"


class _Cond:
    """One conditioning input prepared as XLabs' prepare() does (first entry only)."""

    def __init__(self, conditioning, name, batch, device, dtype, context_dim):
        if not conditioning:
            raise ValueError(f"{NODE}: {name} is empty")
        txt, extra = conditioning[0][0], conditioning[0][1]
        pooled = extra.get("pooled_output")
        if pooled is None:
            raise ValueError(f"{NODE}: {name} has no pooled_output (encode it with a FLUX text encoder, e.g. "
                             "DualCLIPLoader type flux)")
        if txt.ndim != 3 or txt.shape[-1] != context_dim:
            raise ValueError(f"{NODE}: {name} has shape {tuple(txt.shape)}, the FLUX model expects (batch, tokens, "
                             f"{context_dim})")
        if any(entry[1].get("control") is not None for entry in conditioning):
            raise ValueError(f"{NODE}: {name} carries a ControlNet from ComfyUI's Apply ControlNet, which XLabs' "
                             "sampling cannot apply (XlabsSampler ignores it): connect x-flux-comfyui's 'Apply Flux "
                             "ControlNet' to controlnet_condition, or sample with KSampler")
        if len(conditioning) > 1:
            log.info("%s: %s has %d entries; only the first is used (as XlabsSampler)", NODE, name,
                     len(conditioning))
        self.name = name
        self.batch = txt.shape[0]
        self.guidance = extra.get("guidance")
        self.txt = fs.batched(txt, batch).to(device, dtype=dtype)
        self.txt_ids = fs.text_ids(self.txt.shape[0], self.txt.shape[1], device, dtype)
        self.vec = fs.batched(pooled, batch).to(device, dtype=dtype)


def _check_batches(pos, neg, batch):
    if pos.batch != neg.batch and 1 not in (pos.batch, neg.batch):
        raise ValueError(f"{NODE}: batch mismatch between conditioning ({pos.batch}) and neg_conditioning "
                         f"({neg.batch})")
    for c in (pos, neg):
        if c.batch not in (1, batch):
            raise ValueError(f"{NODE}: {c.name} has batch {c.batch} but latent_image has batch {batch}")


class DeepTorchXlabsSampler:
    """XlabsSampler's inputs and results (its latents in XLabs' dtype: bit for bit on stock blocks, else within 1e-4;
    see engine.flux_sampling), on any ComfyUI version,
    through ComfyUI's model loading (DeepyTorch acceleration, LoRA), with progress, preview and Cancel."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A FLUX diffusion model (UNETLoader / checkpoint, after LoRA loaders "
                                               "or 'Apply DeepyTorch to diffusion model')."}),
                "conditioning": ("CONDITIONING", {"tooltip": "Positive prompt from a FLUX text encoder. Its FLUX "
                                                             "guidance (FluxGuidance) is used, else 1.0."}),
                "neg_conditioning": ("CONDITIONING", {"tooltip": "Negative prompt, used by true CFG from step "
                                                                 "timestep_to_start_cfg on."}),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                               "Seed of the starting noise (drawn on the model's device, as XlabsSampler)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100, "tooltip":
                          "Euler steps of the shifted FLUX schedule."}),
                "timestep_to_start_cfg": ("INT", {"default": 20, "min": 0, "max": 100, "tooltip":
                                          "Step index from which true CFG runs (neg + true_gs * (pos - neg), two "
                                          "model calls per step). At or above steps: no CFG."}),
                "true_gs": ("FLOAT", {"default": 3, "min": 0, "max": 100, "tooltip":
                            "True CFG scale (only from step timestep_to_start_cfg on)."}),
                "image_to_image_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Image-to-image with a 16-channel FLUX latent_image: 1 starts "
                                            "from pure noise, lower values start later in the schedule with the "
                                            "image mixed in. 0: no image-to-image (the latent only sets the size)."}),
                "denoise_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                     "XLabs semantics: at 0.99 or below only the first part of the schedule runs "
                                     "(the END is cut, the result stays partly noisy); not ComfyUI's denoise."}),
            },
            "optional": {
                "latent_image": ("LATENT", {"default": None, "tooltip":
                                 "Sets size and batch (4- or 16-channel latent); a 16-channel one is the "
                                 "image-to-image input. Not connected: 1024x1024, batch 1."}),
                "controlnet_condition": ("ControlNetCondition", {"default": None, "tooltip":
                                         "Optional XLabs ControlNet condition (x-flux-comfyui 'Apply Flux "
                                         "ControlNet')."}),
            },
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sampling"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Drop-in replacement for XLabs' XlabsSampler (same inputs and widget values, same latents). Runs "
                   "on every ComfyUI version, with XLabs' LoRA / IP-adapter / ControlNet and with models from "
                   "'Apply DeepyTorch to diffusion model'. Where XlabsSampler fails it does this instead: no "
                   "latent_image = 1024x1024; a 16-channel latent with image_to_image_strength 0 only sets the size.")

    def sampling(self, model, conditioning, neg_conditioning, noise_seed, steps, timestep_to_start_cfg, true_gs,
                 image_to_image_strength, denoise_strength, latent_image=None, controlnet_condition=None):
        dm = model.model.diffusion_model
        if not is_flux(dm):
            raise ValueError(f"{NODE} needs a FLUX model, got {type(model.model).__name__}")
        features = getattr(dm.img_in, "in_features", fs.LATENT_CHANNELS * 4)
        if features != fs.LATENT_CHANNELS * 4:
            raise ValueError(f"{NODE} needs a FLUX text-to-image model (64 input features per token), got "
                             f"{type(model.model).__name__} with {features} (FLUX Fill/Depth/Canny need ComfyUI's "
                             "samplers)")
        device = model.load_device
        dtype = fs.compute_dtype(model.model.get_dtype(), getattr(model.model, "manual_cast_dtype", None))
        samples = None if latent_image is None else latent_image["samples"]
        p = fs.plan(samples, noise_seed, steps, image_to_image_strength, denoise_strength, device, dtype, NODE)
        context_dim = dm.params.context_in_dim
        pos = _Cond(conditioning, "conditioning", p.batch, device, dtype, context_dim)
        neg = _Cond(neg_conditioning, "neg_conditioning", p.batch, device, dtype, context_dim)
        _check_batches(pos, neg, p.batch)
        for note in p.notes:
            log.info("%s: %s", NODE, note)

        h, w = fs.latent_size(p.height, p.width)
        if getattr(model.object_patches.get("diffusion_model.forward"), "deepytorch_region", None) is not None:
            log.warning("%s: this model was compiled by DeepyTorch with scope 'whole' (the diffusion model's "
                        "forward), which XLabs' sampling does not call: it runs uncompiled here. Use scope "
                        "'regional'.", NODE)
        self._load(model, (p.batch * 2, fs.LATENT_CHANNELS, h, w))
        cache = step_cache_of(model)
        options = model.model_options.get("transformer_options")
        if cache is not None:   # another node's block patch set after the step cache's runs inside it
            options = own_patches(options, cache, len(dm.double_blocks), len(dm.single_blocks))[0]
        call = FluxCall(model.model.diffusion_model, options)
        img_ids = fs.image_ids(p.batch, h, w, device, dtype)
        guidance = 1.0 if pos.guidance is None else pos.guidance
        guidance_vec = torch.full((p.batch,), guidance, device=device, dtype=dtype)
        log.info("%s: %d step(s) at %dx%d, batch %d, in %s, calling the model via %s%s", NODE, p.steps, p.width,
                 p.height, p.batch, str(dtype).replace("torch.", ""), call.path,
                 ", image-to-image" if p.img2img else "")
        preview = latent_preview.prepare_callback(model, p.steps)

        def callback(step, img, pred, t_curr, t_prev, total):
            x0 = fs.unpack(fs.predicted_x0(img, pred, t_curr), p.height, p.width).float()
            preview(step, x0, img, total)

        accelerated = xlabs_controlnet.accelerated_of(model)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            if accelerated is not None and stack.enter_context(ip_scales_as_tensors(model.model.diffusion_model)):
                log.info("%s: XLabs IP-adapter strengths passed to the compiled blocks as tensors (a new strength "
                         "compiles nothing)", NODE)
            controls = None
            if controlnet_condition:
                controls = xlabs_controlnet.prepare(controlnet_condition, p.height, p.width, p.schedule_len, device,
                                                    dtype, accelerated, stack)
            if cache is not None:   # the same step cache as in ComfyUI's samplers, driven from XLabs' loop
                cache.begin_run(p.timesteps)
                stack.callback(cache.end_run)

            def residuals_of(img, t_vec, negative, step, cond):
                if controls is None:
                    return None
                return controls(step, negative, lambda c: c.net(
                    img=img, img_ids=img_ids, controlnet_cond=c.image, txt=cond.txt, txt_ids=cond.txt_ids,
                    y=cond.vec, timesteps=t_vec, guidance=guidance_vec))

            def model_fn(img, t_vec, negative, step):
                cond = neg if negative else pos
                if cache is None:
                    return call(img, img_ids, cond.txt, cond.txt_ids, t_vec, cond.vec, guidance_vec, negative,
                                residuals_of(img, t_vec, negative, step, cond))
                windows = None if controls is None else tuple(c.start <= step <= c.end for c in controls.controls)
                cache.begin_call(float(t_vec[0]), ("negative" if negative else "positive", tuple(img.shape)),
                                 control=windows, blocks=True)
                try:
                    # the positive call decides the step (after its first block, where XLabs' residuals are already
                    # added): its ControlNet always runs. A negative call of a skipped step uses no residual.
                    residuals = None if negative and cache.will_skip() else residuals_of(img, t_vec, negative, step,
                                                                                           cond)
                    return call(img, img_ids, cond.txt, cond.txt_ids, t_vec, cond.vec, guidance_vec, negative,
                                residuals)
                finally:
                    cache.call = None

            img = fs.euler(model_fn, p.start, p.timesteps, true_gs, timestep_to_start_cfg, callback,
                           mm.throw_exception_if_processing_interrupted)
        xlabs_controlnet.report(controls)
        out = fs.finish(img, p).to(mm.intermediate_device(), dtype=torch.float32)
        return ({"samples": out},)

    @staticmethod
    def _load(model, input_shape):
        """Load (and patch) the model as ComfyUI's samplers do: object patches such as compiled blocks apply now."""
        try:
            memory = model.model.memory_required(list(input_shape))
        except Exception:
            memory = 0
        mm.load_models_gpu([model], memory_required=memory)
