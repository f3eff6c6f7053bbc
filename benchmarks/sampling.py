"""Sampling the way ComfyUI does, timed: a booted ComfyUI (devkit) with one benchmark model, its variants (eager,
eager + SDPA, ComfyUI's TorchCompileModel, DeepyTorch), and the KSampler / DeepTorch Sampler paths with a step
clock."""
import os
import sys
import time

from devkit import widths
from devkit.scratch import scratch_dir
from sizes import SDXL_UNET, SIZES, TEXT_TOKENS, family, model_file, say, state_dicts


class Bench:
    def __init__(self, args):
        from devkit.comfy_boot import Comfy
        from devkit.locate import checkouts
        found = checkouts()
        if not found:
            sys.exit("bench: no ComfyUI found (make comfyui)")
        self.comfy_name, path = found[-1]
        # the compile cache in the benchmark's own cache, not in the (shared) ComfyUI checkout's models folder
        os.environ.setdefault("DEEPYTORCH_CACHE_DIR", os.path.join(os.path.expanduser(args.cache), "compile-cache"))
        extra = [] if args.device == "cpu" else ["--gpu-only"]
        self.comfy = Comfy(path, scratch_dir("deepytorch-bench-"), extra_argv=extra, device=args.device)
        widths.install()   # the narrow sizes keep FLUX / SDXL key names and depth, not their widths
        import torch
        self.torch = torch
        models = os.path.join(os.path.expanduser(args.cache), "models")
        for sub in ("unet", "loras"):
            os.makedirs(os.path.join(models, sub), exist_ok=True)
        import folder_paths
        for name, sub in (("diffusion_models", "unet"), ("unet", "unet"), ("loras", "loras")):
            try:
                folder_paths.add_model_folder_path(name, os.path.join(models, sub), is_default=True)
            except TypeError:
                folder_paths.add_model_folder_path(name, os.path.join(models, sub))
        dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
        import nodes
        self.nodes = nodes
        if getattr(args, "in_memory", False):
            # UNETLoader's own path (comfy.sd.load_diffusion_model_state_dict) without the file: FLUX-dev in bf16
            # would be 24 GB on disk, and the GPU fills it in seconds
            import comfy.sd
            say(f"building {args.size} weights in memory on {args.device} (ComfyUI's class, random)")
            sd, self.lora_sd = state_dicts(args.size, dtype, device=args.device)
            self.base = comfy.sd.load_diffusion_model_state_dict(sd)
            del sd
            self.unet = self.lora = None
        else:
            self.unet, self.lora = model_file(models, args.size, dtype)
            self.base = nodes.UNETLoader().load_unet(self.unet, "default")[0]
        self.args = args
        self.family = family(args.size)
        g = torch.Generator().manual_seed(0)
        if self.family == "sdxl":
            self.cond = [[torch.randn(1, TEXT_TOKENS["sdxl"], SDXL_UNET["context_dim"], generator=g),
                          {"pooled_output": torch.randn(1, 1280, generator=g)}]]
        else:
            dims = SIZES[args.size]
            self.cond = [[torch.randn(1, TEXT_TOKENS["flux"], dims["context_in_dim"], generator=g),
                          {"pooled_output": torch.randn(1, dims["vec_in_dim"], generator=g), "guidance": 3.5}]]
        self.paths = ["ksampler", "deeptorch-sampler"] if self.family == "flux" else ["ksampler"]

    def with_lora(self, model, strength):
        """`model` + the benchmark LoRA at `strength`, by ComfyUI's LoRA loader (from the file, or the in-memory
        state dict through the function that loader calls)."""
        if self.lora is not None:
            return self.nodes.LoraLoaderModelOnly().load_lora_model_only(model, self.lora, strength)[0]
        import comfy.sd
        return comfy.sd.load_lora_for_models(model, None, self.lora_sd, strength, 0)[0]

    def variant(self, name, model=None):
        model = model or self.base
        node = self.nodes.NODE_CLASS_MAPPINGS["DeepyTorchApplyDiffusionModel"]()
        if name == "eager":
            return model
        if name == "eager-sdpa":
            return node.apply(model, "eager", "default", "auto", "regional", False, "sdpa")[0]
        if name == "deepytorch":
            return node.apply(model, "inductor", "default", "auto", "regional", False, "auto")[0]
        if name == "deepytorch-autotune":
            return node.apply(model, "inductor", "max-autotune-no-cudagraphs", "auto", "regional", False, "auto")[0]
        if name == "deepytorch-whole":
            return node.apply(model, "inductor", "default", "auto", "whole", False, "auto")[0]
        if name == "peer":   # exactly what ComfyUI's TorchCompileModel node does on this version
            m = model.clone()
            try:
                from comfy_api.torch_helpers import set_torch_compile_wrapper
                set_torch_compile_wrapper(model=m, backend="inductor")
            except ImportError:
                m.add_object_patch("diffusion_model", self.torch.compile(m.get_model_object("diffusion_model"),
                                                                        backend="inductor"))
            return m
        raise KeyError(name)

    def sample(self, model, width, height, steps, seed=0, path="ksampler", cond=None, neg=None,
               controlnet_condition=None):
        """Sampling through `path`: 'ksampler' = ComfyUI's KSampler path (comfy.sample.sample, as common_ksampler
        calls it), 'deeptorch-sampler' = the DeepTorch Sampler node (XLabs' sampling on forward_orig). Returns
        (end-to-end seconds, seconds per step measured between step callbacks (excludes model load), samples).
        `cond` / `neg`: conditionings other than the benchmark's (e.g. with a ComfyUI ControlNet applied);
        `controlnet_condition`: an XLabs ControlNet condition for the DeepTorch Sampler."""
        cond = self.cond if cond is None else cond
        neg = cond if neg is None else neg
        if path == "deeptorch-sampler":
            return self.sample_deeptorch(model, width, height, steps, seed, cond, neg, controlnet_condition)
        import comfy.sample
        channels = model.model.latent_format.latent_channels
        latent = comfy.sample.fix_empty_latent_channels(model, self.torch.zeros(1, channels, height // 8, width // 8))
        noise = comfy.sample.prepare_noise(latent, seed, None)
        clock = StepClock(self.args.device)
        out = clock.run(lambda: comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, neg,
                                                    latent, callback=clock.mark, disable_pbar=True, seed=seed))
        return clock.total, clock.per_step(), out

    def sample_deeptorch(self, model, width, height, steps, seed, cond, neg, controlnet_condition=None):
        """The DeepTorch Sampler node (no true CFG: one model call per step, like the KSampler path at cfg 1);
        steps are timed through ComfyUI's progress-bar hook, which the node's preview callback drives."""
        import comfy.utils
        clock = StepClock(self.args.device)
        node = self.nodes.NODE_CLASS_MAPPINGS["DeepTorchXlabsSampler"]()
        latent = {"samples": self.torch.zeros(1, 16, height // 8, width // 8)}
        previous = comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_global_hook(clock.mark)
        try:
            out = clock.run(lambda: node.sampling(model, cond, neg, seed, steps, steps, 1.0, 0.0, 1.0, latent,
                                                  controlnet_condition)[0]["samples"])
        finally:
            comfy.utils.set_progress_bar_global_hook(previous)
        return clock.total, clock.per_step(), out


class StepClock:
    """End-to-end time of a sampling call and the times of its step callbacks (synchronised on CUDA)."""

    def __init__(self, device):
        import torch
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.marks = []
        self.total = None

    def mark(self, *args, **kwargs):
        self.sync()
        self.marks.append(time.perf_counter())

    def run(self, sampling):
        import torch
        t0 = time.perf_counter()
        with torch.inference_mode():   # as ComfyUI's executor runs every node
            out = sampling()
        self.sync()
        self.total = time.perf_counter() - t0
        return out

    def per_step(self):
        """Seconds per step between the first and last step callbacks (excludes model loading)."""
        m = self.marks
        return (m[-1] - m[0]) / (len(m) - 1) if len(m) > 1 else self.total
