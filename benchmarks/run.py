#!/usr/bin/env python3
"""DeepyTorch benchmark: eager ComfyUI vs ComfyUI's own TorchCompileModel (the peer) vs DeepyTorch, sampling the
way ComfyUI does (its KSampler path), in ONE process with interleaved repeats (this machine's speed drifts: only
ratios from one run are compared). Cold / warm compile times and peak memory come from fresh processes.

Models are ComfyUI's own FLUX class with random weights at named sizes, loaded through UNETLoader:
  tiny              hidden 64, 2 + 2 blocks (smoke test)
  flux-deep-narrow  hidden 256 (2 heads x 128), the real depth 19 double + 38 single blocks (CPU-sized)
  flux-dev          hidden 3072 (24 heads), 19 + 38 blocks: the real FLUX.1-dev shape (GPU)

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
}
TEXT_TOKENS = 256
VARIANTS = {
    "eager": "ComfyUI eager (its default attention)",
    "eager-sdpa": "ComfyUI eager with PyTorch SDPA (DeepyTorch backend eager, attention sdpa)",
    "peer": "ComfyUI TorchCompileModel (inductor, whole model)",
    "deepytorch": "DeepyTorch (inductor, regional, attention auto)",
    "deepytorch-whole": "DeepyTorch (inductor, whole model, attention auto)",
    "deepytorch-autotune": "DeepyTorch (inductor max-autotune-no-cudagraphs, regional, attention auto)",
}
DEFAULT_VARIANTS = "eager,eager-sdpa,peer,deepytorch,deepytorch-whole"


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
    import comfy.ldm.flux.model as fm
    import comfy.ops
    dims = dict(in_channels=16, out_channels=16, mlp_ratio=4.0, theta=10000, patch_size=2, qkv_bias=True,
                guidance_embed=True, **SIZES[size])
    say(f"building {size} FLUX weights (ComfyUI's Flux class, random) -> {path}")
    sd = tiny_models._meta_sd(lambda: fm.Flux(operations=comfy.ops.disable_weight_init, device="meta", **dims))
    sd = {k: v.to(dtype) for k, v in tiny_models._fill(sd, 1).items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(os.path.dirname(lora), exist_ok=True)
    save_file(sd, path)
    save_file(tiny_models.make_flux_lora(sd), lora)
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
        dims = SIZES[args.size]
        g = torch.Generator().manual_seed(0)
        self.cond = [[torch.randn(1, TEXT_TOKENS, dims["context_in_dim"], generator=g),
                      {"pooled_output": torch.randn(1, dims["vec_in_dim"], generator=g), "guidance": 3.5}]]

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

    def sample(self, model, width, height, steps, seed=0):
        """ComfyUI's KSampler path (comfy.sample.sample, as common_ksampler calls it). Returns (end-to-end seconds,
        seconds per step measured between step callbacks (excludes model load), samples)."""
        import comfy.sample
        latent = comfy.sample.fix_empty_latent_channels(model, self.torch.zeros(1, 16, height // 8, width // 8))
        noise = comfy.sample.prepare_noise(latent, seed, None)
        marks = []

        def callback(step, x0, x, total):
            if self.args.device == "cuda":
                self.torch.cuda.synchronize()
            marks.append(time.perf_counter())
        t0 = time.perf_counter()
        out = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", self.cond, self.cond, latent,
                                  callback=callback, disable_pbar=True, seed=seed)
        if self.args.device == "cuda":
            self.torch.cuda.synchronize()
        total = time.perf_counter() - t0
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else total
        return total, per_step, out


def peak_memory(device):
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # MiB (Linux reports KiB)


# -- phase: one variant in a fresh process (cold / warm compile, peak memory) -----------------------------------------
def phase_compile(args):
    b = Bench(args)
    w, h = args.width, args.height
    model = b.variant(args.variant)
    first, _, _ = b.sample(model, w, h, 1)
    second, _, _ = b.sample(model, w, h, 1, seed=1)
    print("RESULT " + json.dumps({"variant": args.variant, "first_s": first, "step_s": second,
                                  "compile_s": max(0.0, first - second), "peak_mib": peak_memory(args.device)}))


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
        results["variants"][v]["peak_mib"] = cold["peak_mib"]
        say(f"{v}: cold compile {cold['compile_s']:.1f} s, peak {cold['peak_mib']:.0f} MiB")
        if v == "deepytorch":
            say(f"{v}: warm start in a new process (cache present)")
            warm = fresh(args, v, os.path.join(cache_root, v))
            results["variants"][v]["warm_compile_s"] = warm["compile_s"]
            say(f"{v}: warm start {warm['compile_s']:.1f} s")
    shutil.rmtree(cache_root, ignore_errors=True)
    for v in ("eager", "eager-sdpa"):
        if v in variants:
            results["variants"].setdefault(v, {})["peak_mib"] = fresh(args, v, tempfile.mkdtemp())["peak_mib"]

    # 2. steady speed: one process, interleaved repeats
    b = Bench(args)
    results["comfyui"] = b.comfy_name
    results["torch"] = b.torch.__version__
    models = {v: b.variant(v) for v in variants}
    w, h = args.width, args.height
    for v in variants:
        say(f"{v}: warm-up")
        b.sample(models[v], w, h, args.steps)
    totals = {v: [] for v in variants}
    steps = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants:
            total, per_step, _ = b.sample(models[v], w, h, args.steps, seed=r)
            totals[v].append(total)
            steps[v].append(per_step)
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} {steps[v][-1]:.3f}" for v in variants) + " s/step")
    for v in variants:
        results["variants"].setdefault(v, {}).update(
            description=VARIANTS[v], sampling_s=statistics.median(totals[v]), s_per_step=statistics.median(steps[v]),
            s_per_step_min=min(steps[v]), s_per_step_max=max(steps[v]))

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

    eager = results["variants"].get("eager", {}).get("s_per_step")
    peer = results["variants"].get("peer", {}).get("s_per_step")
    for v, r in results["variants"].items():
        if "s_per_step" in r:
            r["speedup_vs_eager"] = eager / r["s_per_step"] if eager else None
            r["speedup_vs_peer"] = peer / r["s_per_step"] if peer else None
    write(results, args.out)


def write(results, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    cols = ["variant", "s/step (median)", "min", "max", "sampling s", "x eager", "x peer", "cold compile s",
            "warm compile s", "peak MiB"]
    lines = [f"DeepyTorch benchmark: FLUX {results['size']}, {results['resolution']}, {results['steps']} steps, "
             f"{results['repeats']} repeats, device {results['device']}, ComfyUI {results.get('comfyui')}, "
             f"torch {results.get('torch')}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def fmt(x, p=3):
        return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))
    for v, r in results["variants"].items():
        lines.append("| " + " | ".join([v, fmt(r.get("s_per_step")), fmt(r.get("s_per_step_min")),
                                        fmt(r.get("s_per_step_max")), fmt(r.get("sampling_s"), 2),
                                        fmt(r.get("speedup_vs_eager"), 2), fmt(r.get("speedup_vs_peer"), 2),
                                        fmt(r.get("cold_compile_s"), 1), fmt(r.get("warm_compile_s"), 1),
                                        fmt(r.get("peak_mib"), 0)]) + " |")
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
    rows = [(v, r["s_per_step"]) for v, r in results["variants"].items() if "s_per_step" in r]
    if not rows:
        return
    width, bar_h, left = 760, 34, 170
    img = Image.new("RGB", (width, 60 + bar_h * len(rows)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"FLUX {results['size']} {results['resolution']} on {results['device']}: seconds per step "
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
    args.width, args.height = map(int, (args.res or ("768x1024" if gpu else "512x512")).split("x"))
    args.cache = os.path.expanduser(args.cache)
    args.out = args.out or os.path.join(ROOT, "test-artifacts", "bench", f"{args.device}-{args.size}")
    (phase_compile if args.phase == "compile" else phase_main)(args)


if __name__ == "__main__":
    main()
