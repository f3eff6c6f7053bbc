#!/usr/bin/env python3
"""Step cache benchmark: "Apply DeepyTorch step cache" against ComfyUI's EasyCache on the same model, each alone and
with the compiled model (DeepyTorch, inductor, regional), through ComfyUI's KSampler path (euler, cfg 1), in ONE
process with interleaved repeats (only ratios from one run are compared on this CPU).

Per variant: s/image (median of the repeats, model loaded), steps skipped (counted on the model's last block:
a skipped step never runs it), and the error against the uncached image of the same seed: mean / max absolute
difference of the latents, and of their pixels as ComfyUI's latent preview shows them (the model's
latent_rgb_factors, 0..255). Random weights: the error figures are indicative only.

  python benchmarks/step_cache.py [--size flux-deep-narrow|sdxl-narrow] [--steps 20] [--res 256x256]
      [--ours 0.5,0.7,0.9] [--easycache 0.2,0.5,1] [--repeats 2] [--probe]
--probe: one run with verify at a threshold no estimate reaches, printing our estimates and real errors per step
(to choose the --ours range for random weights). Writes <out>/results.json and results.md; prints the table.
"""
import argparse
import importlib
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "dev"), os.path.join(ROOT, "benchmarks")]

from report import parse, save, shared_args  # noqa: E402
from sizes import say  # noqa: E402

WINDOW = dict(start=0.15, end=0.95, max_consecutive=3)   # the node's defaults, for both caches' windows


def preview_pixels(model, latent):
    """The latent as ComfyUI's latent preview shows it (in the model's latent space: latent_rgb_factors + bias,
    then 0..255)."""
    import torch
    fmt = model.model.latent_format
    latent = fmt.process_in(latent)
    factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)
    bias = torch.tensor(fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0], dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", latent.float(), factors) + bias.reshape(1, 3, 1, 1)
    return ((rgb + 1.0) / 2.0).clamp(0, 1) * 255.0


class Computed:
    """Counts the calls of the model's last block (FLUX: the last single block; SDXL: the output layer)."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        last = dm.single_blocks[-1] if hasattr(dm, "single_blocks") else dm.out
        self.n = 0
        self.hook = last.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.n += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="flux-deep-narrow", choices=["flux-deep-narrow", "sdxl-narrow", "tiny"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ours", default="0.5,0.7,0.9", help="our thresholds")
    ap.add_argument("--easycache", default="0.2,0.5,1", help="EasyCache's reuse thresholds")
    ap.add_argument("--compiled", default="best", help="'best': each cache's highest threshold also with the "
                    "compiled model; 'all'; 'none'")
    ap.add_argument("--probe", action="store_true")
    shared_args(ap, "256x256")
    args = parse(ap, "stepcache")
    from run import cpu_name, git_commit
    from sampling import Bench
    b = Bench(args)
    torch = b.torch
    sc = importlib.import_module(b.nodes.NODE_CLASS_MAPPINGS["DeepyTorchStepCache"].__module__)
    node = sc.ApplyDeepyTorchStepCache()
    w, h, steps = args.width, args.height, args.steps

    def ours(model, t, verify=False):
        return node.apply(model, t, WINDOW["start"], WINDOW["end"], WINDOW["max_consecutive"], verify)[0]

    if args.probe:
        m = ours(b.base, 1e9, verify=True)
        b.sample(m, w, h, steps)
        run = sc.step_cache_of(m).runs[-1]
        for step, est, real in run["verify"]:
            print(f"step {step:2d}: estimate {est:.4f}  real error {real:.4f}")
        return
    try:
        import comfy_extras.nodes_easycache as ec
    except ImportError:
        ec = None
        say("this ComfyUI has no EasyCache (v0.3.52+): only our cache is measured")

    def easy(model, t):
        out = ec.EasyCacheNode.execute(model, t, WINDOW["start"], WINDOW["end"], False)
        return out[0] if isinstance(out, tuple) else out.args[0]

    compiled = b.variant("deepytorch")
    ours_t = [float(x) for x in args.ours.split(",") if x]
    easy_t = [float(x) for x in args.easycache.split(",") if x] if ec else []
    variants = {"uncached": (b.base, "ComfyUI eager, no cache"),
                "compiled": (compiled, "DeepyTorch (diffusion node), no cache")}
    with_compile = {"best": lambda ts: ts[-1:], "all": lambda ts: ts, "none": lambda ts: []}[args.compiled]
    for t in ours_t:
        variants[f"ours-{t:g}"] = (ours(b.base, t), f"DeepyTorch step cache, threshold {t:g}")
    for t in with_compile(ours_t):
        variants[f"ours-{t:g}+compiled"] = (ours(compiled, t), f"DeepyTorch step cache {t:g} + compiled")
    for t in easy_t:
        variants[f"easycache-{t:g}"] = (easy(b.base, t), f"ComfyUI EasyCache, reuse_threshold {t:g}")
    for t in with_compile(easy_t):
        variants[f"easycache-{t:g}+compiled"] = (easy(compiled, t), f"ComfyUI EasyCache {t:g} + compiled")

    for v, (model, _) in variants.items():
        say(f"{v}: warm-up (compiles)")
        b.sample(model, w, h, steps)
    times = {v: [] for v in variants}
    stats = {}
    for r in range(args.repeats):
        for v, (model, _) in variants.items():
            counter = Computed(model)
            try:
                total, _, out = b.sample(model, w, h, steps, seed=r)
            finally:
                counter.hook.remove()
            times[v].append(total)
            stats.setdefault(v, []).append((counter.n, out["samples"] if isinstance(out, dict) else out))
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} {times[v][-1]:.2f}" for v in variants) + " s")
    ref = [s[1] for s in stats["uncached"]]
    results = {"size": args.size, "device": args.device, "steps": steps, "repeats": args.repeats,
               "resolution": args.res, "window": WINDOW, "comfyui": b.comfy_name, "torch": torch.__version__,
               "commit": git_commit(), "allocator": args.allocator,
               "device_name": cpu_name() if args.device == "cpu" else torch.cuda.get_device_name(0), "variants": {}}
    base = statistics.median(times["uncached"])
    for v, (model, desc) in variants.items():
        lat = [(o.float() - r_.float()).abs() for (_, o), r_ in zip(stats[v], ref)]
        pix = [(preview_pixels(b.base, o) - preview_pixels(b.base, r_)).abs() for (_, o), r_ in zip(stats[v], ref)]
        med = statistics.median(times[v])
        results["variants"][v] = {
            "description": desc, "s_per_image": med, "s_min": min(times[v]), "s_max": max(times[v]),
            "speedup": base / med, "skipped": steps - stats[v][0][0],
            "latent_mean_err": statistics.mean(float(x.mean()) for x in lat),
            "latent_rel_err": statistics.mean(float(x.mean() / r_.float().abs().mean()) for x, r_ in zip(lat, ref)),
            "latent_max_err": max(float(x.max()) for x in lat),
            "pixel_mean_err": statistics.mean(float(x.mean()) for x in pix),
            "pixel_max_err": max(float(x.max()) for x in pix)}
    results["latent_scale"] = statistics.mean(float(r_.float().abs().mean()) for r_ in ref)
    results["targets"] = targets(results["variants"], ours_t, easy_t)
    write(results, args.out)


def targets(v, ours_t, easy_t):
    """For each EasyCache threshold: our most-skipping threshold with a mean pixel error <= EasyCache's skips at
    least as many steps; cache + compile >= 0.9 x (cache's ratio x compile's ratio)."""
    out = []
    for t in easy_t:
        e = v[f"easycache-{t:g}"]
        fits = [v[f"ours-{o:g}"] for o in ours_t if v[f"ours-{o:g}"]["pixel_mean_err"] <= e["pixel_mean_err"]]
        best = max((f["skipped"] for f in fits), default=None)
        out.append({"target": f"EasyCache {t:g} ({e['skipped']} skipped, mean pixel error "
                    f"{e['pixel_mean_err']:.2f}): ours at <= that error skips {best}",
                    "met": best is not None and best >= e["skipped"]})
    for name in [k for k in v if k.endswith("+compiled")]:
        alone, comp = v[name[:-len("+compiled")]], v["compiled"]
        want = 0.9 * alone["speedup"] * comp["speedup"]
        out.append({"target": f"{name}: {v[name]['speedup']:.2f}x >= 0.9 x {alone['speedup']:.2f} x "
                    f"{comp['speedup']:.2f} = {want:.2f}x", "met": v[name]["speedup"] >= want})
    return out


def write(results, out):
    lines = [f"DeepyTorch step cache benchmark: {results['size']}, {results['resolution']}, {results['steps']} steps "
             f"(euler, cfg 1), {results['repeats']} repeats, device {results['device']} ({results['device_name']}), "
             f"ComfyUI {results['comfyui']}, torch {results['torch']}, commit {results['commit']}, "
             f"allocator {results.get('allocator')}; window "
             f"{results['window']}. Errors vs the uncached image; random weights: indicative only.", "",
             f"Uncached latents: mean |latent| {results['latent_scale']:.3f}.", "",
             "| variant | s/image (median) | min | max | x uncached | skipped | latent err mean | max | relative | "
             "pixel err mean | max |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        lines.append(f"| {name}: {r['description']} | {r['s_per_image']:.2f} | {r['s_min']:.2f} | {r['s_max']:.2f} "
                     f"| {r['speedup']:.2f} | {r['skipped']} | {r['latent_mean_err']:.4f} | "
                     f"{r['latent_max_err']:.4f} | {r['latent_rel_err']:.4f} | {r['pixel_mean_err']:.2f} | "
                     f"{r['pixel_max_err']:.1f} |")
    lines.append("")
    lines += [f"- {t['target']}: {'met' if t['met'] else 'MISSED'}" for t in results["targets"]]
    save(results, out, lines)


if __name__ == "__main__":
    main()
