#!/usr/bin/env python3
"""DeepyTorch benchmark: eager ComfyUI vs ComfyUI's own TorchCompileModel (the peer) vs DeepyTorch, sampling the
way ComfyUI does (its KSampler path; for FLUX also the DeepTorch Sampler path), in ONE process with interleaved
repeats (this machine's speed drifts: only ratios from one run are compared). Cold / warm compile times and peak
memory come from fresh processes.

Models are ComfyUI's own FLUX / SDXL UNet classes with random weights at named sizes, loaded through UNETLoader:
  tiny              FLUX hidden 64, 2 + 2 blocks (smoke test)
  flux-deep-narrow  FLUX hidden 256 (2 heads x 128), the real depth 19 double + 38 single blocks (CPU-sized)
  flux-dev          FLUX hidden 3072 (24 heads), 19 + 38 blocks: the real FLUX.1-dev shape (GPU)
  sdxl-narrow       SDXL UNet with the real depth (2 res blocks per level, 2 / 10 / 10 transformer layers), 64
                    base channels instead of 320 (CPU-sized)
  sdxl              the real SDXL UNet shape (320 base channels, context 2048, ADM 2816) (GPU)

  python benchmarks/run.py [--size flux-deep-narrow] [--device cpu|cuda] [--steps 2] [--repeats 5] [--res 512x512]
Writes <out>/results.json, results.md and results.png; prints the table.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

SIZES = {
    "tiny": dict(hidden_size=64, num_heads=4, depth=2, depth_single_blocks=2, context_in_dim=32, vec_in_dim=32,
                 axes_dim=[4, 6, 6]),
    "flux-deep-narrow": dict(hidden_size=256, num_heads=2, depth=19, depth_single_blocks=38, context_in_dim=4096,
                             vec_in_dim=768, axes_dim=[16, 56, 56]),
    "flux-dev": dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, context_in_dim=4096,
                     vec_in_dim=768, axes_dim=[16, 56, 56]),
    # SDXL: ComfyUI's own UNet config for SDXL (supported_models.SDXL + model_detection), base width varied
    "sdxl-narrow": dict(model_channels=64),
    "sdxl": dict(model_channels=320),
}
SDXL_UNET = dict(in_channels=4, out_channels=4, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_head_channels=64,
                 num_heads=-1, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
                 image_size=32, use_spatial_transformer=True, legacy=False, use_temporal_resblock=False,
                 use_temporal_attention=False)
TEXT_TOKENS = {"flux": 256, "sdxl": 77}
VARIANTS = {
    "eager": "ComfyUI eager (its default attention)",
    "eager-sdpa": "ComfyUI eager with PyTorch SDPA (DeepyTorch backend eager, attention sdpa)",
    "peer": "ComfyUI TorchCompileModel (inductor, whole model)",
    "deepytorch": "DeepyTorch (inductor, regional, attention auto)",
    "deepytorch-whole": "DeepyTorch (inductor, whole model, attention auto)",
    "deepytorch-autotune": "DeepyTorch (inductor max-autotune-no-cudagraphs, regional, attention auto)",
}
DEFAULT_VARIANTS = "eager,eager-sdpa,peer,deepytorch,deepytorch-whole"


def family(size):
    return "sdxl" if size.startswith("sdxl") else "flux"


def say(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- models ---------------------------------------------------------------------------------------------------------
def model_file(models_dir, size, dtype):
    from safetensors.torch import save_file
    from harness import tiny_models
    path = os.path.join(models_dir, "unet", f"bench-{size}.safetensors")
    lora = os.path.join(models_dir, "loras", f"bench-{size}-lora.safetensors")
    if os.path.exists(path) and os.path.exists(lora):
        return os.path.basename(path), os.path.basename(lora)
    import comfy.ops
    ops = comfy.ops.disable_weight_init
    if family(size) == "sdxl":
        import comfy.ldm.modules.diffusionmodules.openaimodel as oai
        say(f"building {size} SDXL UNet weights (ComfyUI's UNetModel, random) -> {path}")
        sd = tiny_models._meta_sd(lambda: oai.UNetModel(dtype=dtype, device="meta", operations=ops,
                                                        **SDXL_UNET, **SIZES[size]))
        sd = tiny_models._fill(sd, 1, dtype)
        lora_sd = tiny_models.make_sdxl_lora({"model.diffusion_model." + k: v for k, v in sd.items()})
    else:
        import comfy.ldm.flux.model as fm
        dims = dict(in_channels=16, out_channels=16, mlp_ratio=4.0, theta=10000, patch_size=2, qkv_bias=True,
                    guidance_embed=True, **SIZES[size])
        say(f"building {size} FLUX weights (ComfyUI's Flux class, random) -> {path}")
        sd = tiny_models._meta_sd(lambda: fm.Flux(operations=ops, device="meta", **dims))
        sd = tiny_models._fill(sd, 1, dtype)
        lora_sd = tiny_models.make_flux_lora(sd)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(os.path.dirname(lora), exist_ok=True)
    save_file(sd, path)
    save_file(lora_sd, lora)
    return os.path.basename(path), os.path.basename(lora)


class Bench:
    def __init__(self, args):
        from harness.comfy_boot import Comfy
        from harness.locate import checkouts
        found = checkouts()
        if not found:
            sys.exit("bench: no ComfyUI found (make comfyui)")
        self.comfy_name, path = found[-1]
        extra = [] if args.device == "cpu" else ["--gpu-only"]
        self.comfy = Comfy(path, tempfile.mkdtemp(prefix="deepytorch-bench-"), extra_argv=extra)
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
        self.unet, self.lora = model_file(models, args.size, dtype)
        import nodes
        self.nodes = nodes
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

    def sample(self, model, width, height, steps, seed=0, path="ksampler"):
        """Sampling through `path`: 'ksampler' = ComfyUI's KSampler path (comfy.sample.sample, as common_ksampler
        calls it), 'deeptorch-sampler' = the DeepTorch Sampler node (XLabs' sampling on forward_orig). Returns
        (end-to-end seconds, seconds per step measured between step callbacks (excludes model load), samples)."""
        if path == "deeptorch-sampler":
            return self.sample_deeptorch(model, width, height, steps, seed)
        import comfy.sample
        channels = model.model.latent_format.latent_channels
        latent = comfy.sample.fix_empty_latent_channels(model, self.torch.zeros(1, channels, height // 8, width // 8))
        noise = comfy.sample.prepare_noise(latent, seed, None)
        clock = StepClock(self.args.device)
        out = clock.run(lambda: comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", self.cond, self.cond,
                                                    latent, callback=clock.mark, disable_pbar=True, seed=seed))
        return clock.total, clock.per_step(), out

    def sample_deeptorch(self, model, width, height, steps, seed):
        """The DeepTorch Sampler node (no true CFG: one model call per step, like the KSampler path at cfg 1);
        steps are timed through ComfyUI's progress-bar hook, which the node's preview callback drives."""
        import comfy.utils
        clock = StepClock(self.args.device)
        node = self.nodes.NODE_CLASS_MAPPINGS["DeepTorchXlabsSampler"]()
        latent = {"samples": self.torch.zeros(1, 16, height // 8, width // 8)}
        previous = comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_global_hook(clock.mark)
        try:
            out = clock.run(lambda: node.sampling(model, self.cond, self.cond, seed, steps, steps, 1.0, 0.0, 1.0,
                                                  latent)[0]["samples"])
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


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        return f"{names[0]}, {len(names)} cores" if names else None
    except OSError:
        return platform.processor() or None


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory(device):
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # MiB (Linux reports KiB)


# -- phase: one variant in a fresh process (cold / warm compile, peak memory) -----------------------------------------
def inductor_setup_seconds(device):
    """Seconds of the first torch.compile in this process on a trivial function: inductor's one-time set-up (on CPU
    it builds probe programs to pick the SIMD ISA, cached per cache dir), which every model's first compile pays."""
    import torch
    t0 = time.perf_counter()
    torch.compile(lambda x: (x + 1).relu() * 2)(torch.randn(64, 64, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def phase_compile(args):
    b = Bench(args)
    w, h = args.width, args.height
    model = b.variant(args.variant)
    setup = inductor_setup_seconds(args.device) if args.variant not in ("eager", "eager-sdpa") else 0.0
    first, _, _ = b.sample(model, w, h, 1)
    second, _, _ = b.sample(model, w, h, 1, seed=1)
    model_only = max(0.0, first - second)
    print("RESULT " + json.dumps({"variant": args.variant, "first_s": first, "step_s": second, "setup_s": setup,
                                  "compile_s": setup + model_only, "model_compile_s": model_only,
                                  "peak_mib": peak_memory(args.device)}))


def fresh(args, variant, cache_dir):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, DEEPYTORCH_CACHE_DIR=cache_dir)
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", "compile", "--variant", variant, "--size", args.size,
           "--device", args.device, "--res", f"{args.width}x{args.height}", "--cache", args.cache]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} compile run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# -- phase: everything, in one run ------------------------------------------------------------------------------------
def phase_main(args):
    results = {"size": args.size, "device": args.device, "steps": args.steps, "repeats": args.repeats,
               "resolution": f"{args.width}x{args.height}", "variants": {}, "machine": platform.platform()}
    variants = [v for v in args.variants.split(",") if v]
    # 1. cold and warm compile, peak memory: fresh processes, empty / reused cache
    compile_variants = [v for v in variants if v not in ("eager", "eager-sdpa")]
    cache_root = tempfile.mkdtemp(prefix="deepytorch-bench-cache-")
    for v in compile_variants:
        say(f"{v}: cold compile in a fresh process (empty cache)")
        cold = fresh(args, v, os.path.join(cache_root, v))
        results["variants"].setdefault(v, {})["cold_compile_s"] = cold["compile_s"]
        results["variants"][v]["cold_model_compile_s"] = cold["model_compile_s"]
        results["variants"][v]["inductor_setup_s"] = cold["setup_s"]
        results["variants"][v]["peak_mib"] = cold["peak_mib"]
        say(f"{v}: cold compile {cold['compile_s']:.1f} s (inductor's one-time set-up {cold['setup_s']:.1f} s + "
            f"this model {cold['model_compile_s']:.1f} s), peak {cold['peak_mib']:.0f} MiB")
        if v == "deepytorch":
            say(f"{v}: warm start in a new process (cache present)")
            warm = fresh(args, v, os.path.join(cache_root, v))
            results["variants"][v]["warm_compile_s"] = warm["compile_s"]
            say(f"{v}: warm start {warm['compile_s']:.1f} s (set-up {warm['setup_s']:.1f} s + model "
                f"{warm['model_compile_s']:.1f} s)")
    shutil.rmtree(cache_root, ignore_errors=True)
    for v in ("eager", "eager-sdpa"):
        if v in variants:
            results["variants"].setdefault(v, {})["peak_mib"] = fresh(args, v, tempfile.mkdtemp())["peak_mib"]

    # 2. steady speed: one process, interleaved repeats
    b = Bench(args)
    results["comfyui"] = b.comfy_name
    results["torch"] = b.torch.__version__
    results["device_name"] = b.torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    results["commit"] = git_commit()
    results["paths"] = b.paths
    models = {v: b.variant(v) for v in variants}
    w, h = args.width, args.height
    runs = [(p, v) for p in b.paths for v in variants]
    for p, v in runs:
        say(f"{v} ({p}): warm-up")
        b.sample(models[v], w, h, args.steps, path=p)
    totals = {run: [] for run in runs}
    steps = {run: [] for run in runs}
    for r in range(args.repeats):
        for run in runs:
            total, per_step, _ = b.sample(models[run[1]], w, h, args.steps, seed=r, path=run[0])
            totals[run].append(total)
            steps[run].append(per_step)
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} ({p}) {steps[p, v][-1]:.3f}" for p, v in runs)
            + " s/step")
    for p, v in runs:
        stats = dict(sampling_s=statistics.median(totals[p, v]), s_per_step=statistics.median(steps[p, v]),
                     s_per_step_min=min(steps[p, v]), s_per_step_max=max(steps[p, v]))
        entry = results["variants"].setdefault(v, {})
        entry["description"] = VARIANTS[v]
        if p == "ksampler":
            entry.update(stats)
        else:
            entry.setdefault("paths", {})[p] = stats

    # 3. recompiles: LoRA strength swap, 3 resolutions (DeepyTorch)
    if "deepytorch" in variants:
        from torch._dynamo.utils import counters
        loader = b.nodes.LoraLoaderModelOnly()
        regional = b.comfy.package.engine.regional
        swap = []
        for strength in (1.0, 0.5, 1.0):
            m = b.variant("deepytorch", loader.load_lora_model_only(b.base, b.lora, strength)[0])
            counters.clear()
            b.sample(m, w, h, 1)
            swap.append(counters["stats"]["unique_graphs"])
        results["variants"]["deepytorch"]["recompiles_lora_swap"] = sum(swap[1:])
        m = b.variant("deepytorch")
        for rw, rh in ((w, h), (w * 3 // 4 // 16 * 16, h * 3 // 4 // 16 * 16), (w * 5 // 4 // 16 * 16, h * 9 // 8 // 16 * 16)):
            b.sample(m, rw, rh, 1)
        acc = regional.latest()
        results["variants"]["deepytorch"]["recompiles_3_resolutions"] = acc.recompiles
        results["variants"]["deepytorch"]["compiled_regions"] = len(acc.compiled)
        say(f"recompiles: LoRA swap {sum(swap[1:])}, 3 resolutions {acc.recompiles} over {len(acc.compiled)} regions")

    ratios(results["variants"], lambda r: r)
    for p in b.paths[1:]:
        ratios(results["variants"], lambda r: r.get("paths", {}).get(p, {}))
    write(results, args.out)


def ratios(variants, pick):
    eager = pick(variants.get("eager", {})).get("s_per_step")
    peer = pick(variants.get("peer", {})).get("s_per_step")
    for r in variants.values():
        r = pick(r)
        if "s_per_step" in r:
            r["speedup_vs_eager"] = eager / r["s_per_step"] if eager else None
            r["speedup_vs_peer"] = peer / r["s_per_step"] if peer else None


PATH_TITLES = {"ksampler": "ComfyUI's KSampler path", "deeptorch-sampler": "DeepTorch Sampler path (XLabs' sampling)"}


def write(results, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    def fmt(x, p=3):
        return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))

    def cold(r):
        if r.get("cold_compile_s") is None:
            return "-"
        if r.get("cold_model_compile_s") is None:
            return fmt(r["cold_compile_s"], 1)
        return f"{r['cold_compile_s']:.1f} ({r['inductor_setup_s']:.1f} + {r['cold_model_compile_s']:.1f})"

    lines = [f"DeepyTorch benchmark: {family(results['size']).upper()} {results['size']}, {results['resolution']}, "
             f"{results['steps']} steps, {results['repeats']} repeats, device {results['device']}"
             f"{' (' + results['device_name'] + ')' if results.get('device_name') else ''}, ComfyUI "
             f"{results.get('comfyui')}, torch {results.get('torch')}"]
    for path in results.get("paths", ["ksampler"]):
        first = path == "ksampler"
        cols = ["variant", "s/step (median)", "min", "max", "sampling s", "x eager", "x peer"]
        if first:
            cols += ["cold compile s (inductor set-up + model)", "warm compile s", "peak MiB"]
        lines += ["", PATH_TITLES.get(path, path) + ":", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for v, r in results["variants"].items():
            s = r if first else r.get("paths", {}).get(path, {})
            row = [v, fmt(s.get("s_per_step")), fmt(s.get("s_per_step_min")), fmt(s.get("s_per_step_max")),
                   fmt(s.get("sampling_s"), 2), fmt(s.get("speedup_vs_eager"), 2), fmt(s.get("speedup_vs_peer"), 2)]
            if first:
                row += [cold(r), fmt(r.get("warm_compile_s"), 1), fmt(r.get("peak_mib"), 0)]
            lines.append("| " + " | ".join(row) + " |")
    d = results["variants"].get("deepytorch", {})
    if "recompiles_lora_swap" in d:
        lines += ["", f"DeepyTorch recompiles: LoRA strength swap {d['recompiles_lora_swap']}; 3 resolutions "
                      f"{d['recompiles_3_resolutions']} over {d['compiled_regions']} compiled regions"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    chart(results, os.path.join(out, "results.png"))


def chart(results, path):
    from PIL import Image, ImageDraw
    rows = []
    for p in results.get("paths", ["ksampler"]):
        for v, r in results["variants"].items():
            s = r if p == "ksampler" else r.get("paths", {}).get(p, {})
            if "s_per_step" in s:
                rows.append((v if p == "ksampler" else f"{v} [{p}]", s["s_per_step"]))
    if not rows:
        return
    width, bar_h, left = 860, 34, 270
    img = Image.new("RGB", (width, 60 + bar_h * len(rows)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{results['size']} {results['resolution']} on {results['device']}: seconds per step "
                     "(lower is better)", fill="black")
    top = max(s for _, s in rows)
    for i, (v, s) in enumerate(rows):
        y = 40 + i * bar_h
        d.text((10, y + 8), v, fill="black")
        d.rectangle([left, y + 4, left + int((width - left - 90) * s / top), y + bar_h - 6],
                    fill=(60, 120, 200) if v.startswith("deepytorch") else (160, 160, 160))
        d.text((left + int((width - left - 90) * s / top) + 6, y + 8), f"{s:.3f}", fill="black")
    img.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, choices=list(SIZES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--res", default=None, help="WIDTHxHEIGHT")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default="~/.cache/comfyui-deepytorch/bench")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--phase", default="main", choices=["main", "compile"])
    ap.add_argument("--variant", default=None)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.size = args.size or ("flux-dev" if gpu else "flux-deep-narrow")
    args.steps = args.steps or (20 if gpu else 3)
    default_res = ("1024x1024" if family(args.size) == "sdxl" else "768x1024") if gpu else "512x512"
    args.width, args.height = map(int, (args.res or default_res).split("x"))
    args.cache = os.path.expanduser(args.cache)
    args.out = args.out or os.path.join(ROOT, "test-artifacts", "bench", f"{args.device}-{args.size}")
    (phase_compile if args.phase == "compile" else phase_main)(args)


if __name__ == "__main__":
    main()
