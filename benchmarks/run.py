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
sys.path.insert(0, os.path.join(ROOT, "dev"))   # devkit: boots ComfyUI, builds random-weight models
if os.environ.get("DEEPYTORCH_REHEARSE_GPU_IMAGE"):   # benchmarks/gpu.py --dry-run: only what the GPU machine has
    from devkit import gpu_image
    gpu_image.block(gpu_image.CARRIED)

from devkit import allocator  # noqa: E402
from report import write  # noqa: E402
from sampling import Bench  # noqa: E402
from sizes import SIZES, family, say  # noqa: E402
from devkit.scratch import scratch_dir  # noqa: E402

VARIANTS = {
    "eager": "ComfyUI eager (its default attention)",
    "eager-sdpa": "ComfyUI eager with PyTorch SDPA (DeepyTorch backend eager, attention sdpa)",
    "peer": "ComfyUI TorchCompileModel (inductor, whole model)",
    "deepytorch": "DeepyTorch (inductor, regional, attention auto)",
    "deepytorch-whole": "DeepyTorch (inductor, whole model, attention auto)",
    "deepytorch-autotune": "DeepyTorch (inductor max-autotune-no-cudagraphs, regional, attention auto)",
}
DEFAULT_VARIANTS = "eager,eager-sdpa,peer,deepytorch,deepytorch-whole"



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
    # cold: inductor's one-time set-up timed on its own, then the model; warm: nothing before the model, so the warm
    # start is everything a new process pays before its first step runs at full speed (set-up included)
    setup = inductor_setup_seconds(args.device) if args.variant not in ("eager", "eager-sdpa") and not args.warm \
        else 0.0
    first, _, _ = b.sample(model, w, h, 1)
    second, _, _ = b.sample(model, w, h, 1, seed=1)
    model_only = max(0.0, first - second)
    result = {"variant": args.variant, "first_s": first, "step_s": second, "setup_s": setup,
              "compile_s": setup + model_only, "model_compile_s": model_only, "peak_mib": peak_memory(args.device)}
    if args.variant.startswith("deepytorch"):
        acc = b.comfy.package.engine.regional.latest()
        result.update(start=acc.start, start_counts=acc.start_counts)
    if args.interleave:
        # steady speed of THIS process's compiled code, as a ratio to eager SDPA steps interleaved with it (eager
        # ComfyUI is bimodal between processes: a ratio in one process is what compares across processes)
        reference = b.variant("eager-sdpa")
        b.sample(reference, w, h, 1)
        mine, theirs = [], []
        for r in range(args.interleave):
            mine.append(b.sample(model, w, h, args.steps, seed=r)[1])
            theirs.append(b.sample(reference, w, h, args.steps, seed=r)[1])
        result.update(s_per_step=statistics.median(mine), eager_sdpa_s_per_step=statistics.median(theirs),
                      ratio_vs_eager_sdpa=statistics.median(theirs) / statistics.median(mine))
    print("RESULT " + json.dumps(result))


def fresh(args, variant, cache_dir, env=None, interleave=0, warm=False):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"), DEEPYTORCH_CACHE_DIR=cache_dir,
               **(env or {}))
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", "compile", "--variant", variant, "--size", args.size,
           "--device", args.device, "--res", f"{args.width}x{args.height}", "--cache", args.cache,
           "--steps", str(args.steps), "--interleave", str(interleave)] + (["--warm"] if warm else []) + \
        (["--in-memory"] if args.in_memory else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} compile run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# Warm start: the cache an earlier instance left, in a new process. 'precompiled' is the default path; 'traced' is
# today's caches only (DEEPYTORCH_PRECOMPILE=0: dynamo traces every region again, inductor's caches skip the rest).
STARTS = {"precompiled": {}, "traced": {"DEEPYTORCH_PRECOMPILE": "0"}}


def compile_phases(args, results, compile_variants):
    cache_root = tempfile.mkdtemp(prefix="deepytorch-bench-cache-")
    interleave = args.interleave_fresh
    for v in compile_variants:
        starts = {k: e for k, e in STARTS.items() if k in args.starts.split(",")} if v == "deepytorch" else \
            {"precompiled": {}}
        for how, env in starts.items():
            cache = os.path.join(cache_root, f"{v}-{how}")
            tag = "" if how == "precompiled" else f" ({how})"
            say(f"{v}{tag}: cold compile in a fresh process (empty cache)")
            cold = fresh(args, v, cache, env, interleave if v == "deepytorch" else 0)
            entry = results["variants"].setdefault(v, {})
            if how == "precompiled":
                entry.update(cold_compile_s=cold["compile_s"], cold_model_compile_s=cold["model_compile_s"],
                             inductor_setup_s=cold["setup_s"], peak_mib=cold["peak_mib"])
            say(f"{v}{tag}: cold compile {cold['compile_s']:.1f} s (inductor's one-time set-up {cold['setup_s']:.1f} s "
                f"+ this model {cold['model_compile_s']:.1f} s), peak {cold['peak_mib']:.0f} MiB")
            if v != "deepytorch":
                continue
            say(f"{v}{tag}: warm start in a new process (the cache the cold one left)")
            warm = fresh(args, v, cache, env, interleave, warm=True)
            entry.setdefault("starts", {})[how] = {"cold": cold, "warm": warm,
                                                   "warm_over_cold": warm["compile_s"] / cold["compile_s"]}
            if how == "precompiled":
                entry["warm_compile_s"] = warm["compile_s"]
            say(f"{v}{tag}: warm start {warm['compile_s']:.2f} s (first step minus a steady step, one-time set-up "
                f"included) = {warm['compile_s'] / cold['compile_s']:.3f} of cold; started {warm.get('start')} "
                f"{warm.get('start_counts')}")
    shutil.rmtree(cache_root, ignore_errors=True)


# -- phase: everything, in one run ------------------------------------------------------------------------------------
def phase_main(args):
    results = {"size": args.size, "device": args.device, "steps": args.steps, "repeats": args.repeats,
               "resolution": f"{args.width}x{args.height}", "variants": {}, "machine": platform.platform(),
               "allocator": args.allocator}
    variants = [v for v in args.variants.split(",") if v]
    phases = set(args.phases.split(","))
    # 1. cold and warm compile, peak memory: fresh processes, empty / reused cache
    if "fresh" in phases:
        compile_phases(args, results, [v for v in variants if v not in ("eager", "eager-sdpa")])
        for v in ("eager", "eager-sdpa"):
            if v in variants:
                peak = fresh(args, v, scratch_dir("deepytorch-bench-peak-"))["peak_mib"]
                results["variants"].setdefault(v, {})["peak_mib"] = peak
    if not phases & {"steady", "recompiles"}:
        return write(results, args.out)

    # 2. steady speed: one process, interleaved repeats
    b = Bench(args)
    results["comfyui"] = b.comfy_name
    results["torch"] = b.torch.__version__
    results["device_name"] = b.torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    results["commit"] = git_commit()
    if args.paths:
        b.paths = [p for p in b.paths if p in args.paths.split(",")]
    results["paths"] = b.paths
    models = {v: b.variant(v) for v in variants}
    w, h = args.width, args.height
    runs = [(p, v) for p in b.paths for v in variants] if "steady" in phases else []
    for p, v in runs:
        say(f"{v} ({p}): warm-up")
        b.sample(models[v], w, h, args.steps, path=p)
    totals = {run: [] for run in runs}
    steps = {run: [] for run in runs}
    for r in range(args.repeats if runs else 0):
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
    if "recompiles" in phases and "deepytorch" in variants:
        from torch._dynamo.utils import counters
        regional = b.comfy.package.engine.regional
        swap = []
        for strength in (1.0, 0.5, 1.0):
            m = b.variant("deepytorch", b.with_lora(b.base, strength))
            counters.clear()
            b.sample(m, w, h, 1)
            swap.append(counters["stats"]["unique_graphs"])
        results["variants"].setdefault("deepytorch", {"description": VARIANTS["deepytorch"]})["recompiles_lora_swap"] = \
            sum(swap[1:])
        m = b.variant("deepytorch")
        for rw, rh in ((w, h), (w * 3 // 4 // 16 * 16, h * 3 // 4 // 16 * 16), (w * 5 // 4 // 16 * 16, h * 9 // 8 // 16 * 16)):
            b.sample(m, rw, rh, 1)
        acc = regional.latest()
        results["variants"]["deepytorch"]["recompiles_3_resolutions"] = acc.recompiles
        results["variants"]["deepytorch"]["compiled_regions"] = len(acc.compiled)
        say(f"recompiles: LoRA swap {sum(swap[1:])}, 3 resolutions {acc.recompiles} over {len(acc.compiled)} regions")

    for p in b.paths:
        ratios(results["variants"], (lambda r: r) if p == "ksampler" else
               (lambda r, p=p: r.get("paths", {}).get(p, {})))
    write(results, args.out)


def ratios(variants, pick):
    eager = pick(variants.get("eager", {})).get("s_per_step")
    peer = pick(variants.get("peer", {})).get("s_per_step")
    for r in variants.values():
        r = pick(r)
        if "s_per_step" in r:
            r["speedup_vs_eager"] = eager / r["s_per_step"] if eager else None
            r["speedup_vs_peer"] = peer / r["s_per_step"] if peer else None


def main():
    malloc = allocator.steady()   # before anything is timed: the fresh processes inherit it
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
    ap.add_argument("--interleave", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phases", default="fresh,steady,recompiles",
                    help="which of: fresh (cold / warm compile and peak memory in fresh processes), steady (s/step, "
                         "one process), recompiles (LoRA swap, 3 resolutions)")
    ap.add_argument("--starts", default="precompiled,traced",
                    help="warm starts the fresh phase measures: precompiled (the default path), traced")
    ap.add_argument("--paths", default=None, help="sampling paths of the steady phase: ksampler,deeptorch-sampler")
    ap.add_argument("--in-memory", action="store_true",
                    help="build the model in memory on the device (no weights file; default on cuda)")
    ap.add_argument("--interleave-fresh", type=int, default=3,
                    help="repeats of interleaved steps (vs eager SDPA) in each fresh DeepyTorch process (0: none)")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.in_memory = args.in_memory or gpu
    args.size = args.size or ("flux-dev" if gpu else "flux-deep-narrow")
    args.steps = args.steps or (20 if gpu else 3)
    default_res = ("1024x1024" if family(args.size) == "sdxl" else "768x1024") if gpu else "512x512"
    args.width, args.height = map(int, (args.res or default_res).split("x"))
    args.cache = os.path.expanduser(args.cache)
    args.out = args.out or os.path.join(ROOT, "test-artifacts", "bench", f"{args.device}-{args.size}")
    args.allocator = malloc
    (phase_compile if args.phase == "compile" else phase_main)(args)


if __name__ == "__main__":
    main()
