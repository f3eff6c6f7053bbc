#!/usr/bin/env python3
"""ControlNet benchmark: what a ControlNet costs each variant, in ONE process with interleaved repeats (only ratios
from one run are compared on this CPU).

  sdxl-narrow + an SDXL ControlNet (ComfyUI's cldm.ControlNet at the UNet's widths, random weights, loaded by
    ComfyUI's load_controlnet, applied with ControlNetApplyAdvanced) through ComfyUI's KSampler path:
    eager; the peers: ComfyUI's TorchCompileModel on the model + KJNodes' TorchCompileControlNet way (torch.compile of
    the control model, here on a copy); DeepyTorch with both nodes (diffusion model + controlnet); and the same
    model without a ControlNet, eager and DeepyTorch.
  flux-deep-narrow + an XLabs ControlNet (x-flux-comfyui's ControlNetFlux, 2 double blocks at the model's widths,
    random weights) through the DeepTorch Sampler: eager, DeepyTorch (the diffusion node; the sampler compiles the
    ControlNet's blocks), and both without a ControlNet (TorchCompileModel does nothing on XLabs' sampling).

  python benchmarks/controlnet.py [--size sdxl-narrow|flux-deep-narrow] [--steps 3] [--repeats 3] [--res 512x512]
Writes <out>/results.json and results.md; prints the table.
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "dev"), os.path.join(ROOT, "benchmarks")]

from report import parse, save, shared_args  # noqa: E402
from sizes import SDXL_UNET, SIZES, family, say  # noqa: E402

DESCRIPTIONS = {
    "eager": "ComfyUI eager, no ControlNet",
    "deepytorch": "DeepyTorch (diffusion node), no ControlNet",
    "cn-eager": "ComfyUI eager + ControlNet",
    "cn-peer": "TorchCompileModel + torch.compile of the control model (KJNodes' way) + ControlNet",
    "cn-deepytorch": "DeepyTorch, both nodes (diffusion + controlnet) + ControlNet",
    "cn-deepytorch-model": "DeepyTorch diffusion node only + ControlNet (the control model eager)",
}
SAMPLER_DESCRIPTIONS = {   # the DeepTorch Sampler path: no controlnet node, the sampler compiles XLabs' ControlNet
    "cn-eager": "XLabs ControlNet, all eager",
    "cn-deepytorch": "DeepyTorch (diffusion node; the sampler compiles the XLabs ControlNet's blocks) + ControlNet",
}


def sdxl_controlnet(b, models_dir, dtype):
    """An SDXL ControlNet at the benchmark UNet's widths, written once, loaded by ComfyUI."""
    import comfy.cldm.cldm as cldm
    import comfy.controlnet
    import comfy.ops
    from safetensors.torch import save_file
    from devkit import models
    path = os.path.join(models_dir, "controlnet", f"bench-{b.args.size}-controlnet.safetensors")
    if not os.path.exists(path):
        cfg = {k: v for k, v in dict(SDXL_UNET, **SIZES[b.args.size]).items()
               if k not in ("out_channels", "transformer_depth_output")}
        say(f"building {b.args.size} SDXL ControlNet weights (ComfyUI's cldm.ControlNet, random) -> {path}")
        sd = models.meta_state_dict(lambda: cldm.ControlNet(hint_channels=3, dtype=dtype, device="meta",
                                                            operations=comfy.ops.disable_weight_init, **cfg))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({"control_model." + k: v for k, v in models.fill(sd, 15, dtype).items()}, path)
    return comfy.controlnet.load_controlnet(path)


def xlabs_controlnet(b, dtype):
    """x-flux-comfyui's own ControlNetFlux at the benchmark FLUX widths (imported without its node registration)."""
    import torch
    from devkit import xflux
    try:
        cn = xflux.module("xflux.src.flux.controlnet")
    except ImportError as e:
        sys.exit(f"bench: no XLabs ControlNet: {e}")
    dims = SIZES[b.args.size]
    params = cn.FluxParams(in_channels=64, vec_in_dim=dims["vec_in_dim"], context_in_dim=dims["context_in_dim"],
                           hidden_size=dims["hidden_size"], mlp_ratio=4.0, num_heads=dims["num_heads"],
                           depth=dims["depth"], depth_single_blocks=dims["depth_single_blocks"],
                           axes_dim=dims["axes_dim"], theta=10000, qkv_bias=True, guidance_embed=True)
    torch.manual_seed(0)
    net = cn.ControlNetFlux(params, controlnet_depth=2)
    with torch.no_grad():
        for p in net.parameters():   # XLabs zero-initialises the residual layers: give them weights
            p.copy_(torch.randn(p.shape) / max(1, p.shape[-1]) ** 0.5)
    return net.to(b.args.device, dtype=dtype)


def kj_compiled(control_net):
    """KJNodes' TorchCompileControlNet: torch.compile of the control model (it does so on the loader's object in
    place; here on a copy, so the other variants keep theirs)."""
    import torch
    c = control_net.copy()
    c.control_model = torch.compile(c.control_model, backend="inductor")
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="sdxl-narrow", choices=["sdxl-narrow", "flux-deep-narrow", "tiny", "sdxl",
                                                               "flux-dev"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strength", type=float, default=0.8)
    ap.add_argument("--variants", default=None, help="comma-separated subset of: " + ", ".join(DESCRIPTIONS))
    shared_args(ap, "512x512")
    args = parse(ap, "controlnet")
    from run import cpu_name, git_commit
    from sampling import Bench
    b = Bench(args)
    torch = b.torch
    n = b.nodes.NODE_CLASS_MAPPINGS
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    w, h = args.width, args.height
    hint = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(4))
    deepy = b.variant("deepytorch")
    if family(args.size) == "sdxl":
        path = "ksampler"
        cn = sdxl_controlnet(b, os.path.join(args.cache, "models"), dtype)
        accel_cn = n["DeepyTorchApplyControlNet"]().apply(cn, "inductor", "default", "auto")[0]

        def controlled(control_net):
            pos, neg = n["ControlNetApplyAdvanced"]().apply_controlnet(b.cond, b.cond, control_net, hint,
                                                                      args.strength, 0.0, 1.0)[:2]
            return dict(cond=pos, neg=neg)
        runs = {"eager": (b.base, {}), "deepytorch": (deepy, {}), "cn-eager": (b.base, controlled(cn)),
                "cn-peer": (b.variant("peer"), controlled(kj_compiled(cn))),
                "cn-deepytorch-model": (deepy, controlled(cn)), "cn-deepytorch": (deepy, controlled(accel_cn))}
    else:
        path = "deeptorch-sampler"
        net = xlabs_controlnet(b, dtype)
        condition = [{"img": hint.permute(0, 3, 1, 2) * 2 - 1, "controlnet_strength": args.strength, "model": net,
                      "start": 0.0, "end": 1.0}]
        runs = {"eager": (b.base, {}), "deepytorch": (deepy, {}),
                "cn-eager": (b.base, dict(controlnet_condition=condition)),
                "cn-deepytorch": (deepy, dict(controlnet_condition=condition))}
    if args.variants:
        runs = {v: r for v, r in runs.items() if v in args.variants.split(",")}
    for v, (model, kw) in runs.items():
        say(f"{v}: warm-up (compiles)")
        b.sample(model, w, h, args.steps, path=path, **kw)
    steps = {v: [] for v in runs}
    for r in range(args.repeats):
        for v, (model, kw) in runs.items():
            steps[v].append(b.sample(model, w, h, args.steps, seed=r, path=path, **kw)[1])
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} {steps[v][-1]:.3f}" for v in runs) + " s/step")
    med = {v: statistics.median(s) for v, s in steps.items()}
    results = {"size": args.size, "device": args.device, "steps": args.steps, "repeats": args.repeats,
               "resolution": args.res, "path": path, "strength": args.strength, "comfyui": b.comfy_name,
               "torch": torch.__version__, "commit": git_commit(), "allocator": args.allocator,
               "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name(),
               "variants": {v: {"description": (SAMPLER_DESCRIPTIONS if path == "deeptorch-sampler" else {}).get(
                   v, DESCRIPTIONS[v]), "s_per_step": med[v], "s_per_step_min": min(steps[v]),
                                "s_per_step_max": max(steps[v])} for v in runs}}
    for v, r in results["variants"].items():
        base = med.get("cn-eager") if v.startswith("cn-") else med.get("eager")
        r["speedup_vs_eager"] = base / med[v] if base else None
        if "cn-peer" in med and v.startswith("cn-"):
            r["speedup_vs_peer"] = med["cn-peer"] / med[v]
    write(results, args.out)


def write(results, out):
    v = results["variants"]
    lines = [f"DeepyTorch ControlNet benchmark: {results['size']}, {results['resolution']}, {results['steps']} steps, "
             f"{results['repeats']} repeats, {results['path']} path, device {results['device']} "
             f"({results['device_name']}), ComfyUI {results['comfyui']}, torch {results['torch']}, commit "
             f"{results['commit']}, allocator {results.get('allocator')}", "",
             "| variant | s/step (median) | min | max | x eager (same ControlNet setting) | x peer |", "|---|---|---|---|---|---|"]
    def ratio(x):
        return "-" if x is None else f"{x:.2f}"

    for name, r in v.items():
        lines.append(f"| {name}: {r['description']} | {r['s_per_step']:.3f} | {r['s_per_step_min']:.3f} | "
                     f"{r['s_per_step_max']:.3f} | {ratio(r['speedup_vs_eager'])} | "
                     f"{ratio(r.get('speedup_vs_peer'))} |")
    own = v.get("deepytorch", {}).get("speedup_vs_eager")
    with_cn = v.get("cn-deepytorch", {}).get("speedup_vs_eager")
    if own and with_cn:   # (--variants may leave some out)
        lines += ["", f"DeepyTorch speed-up over eager: {own:.2f}x without a ControlNet, {with_cn:.2f}x with one "
                  f"(target: with >= without: {'met' if with_cn >= own else 'missed'})"]
    if "cn-peer" in v and "cn-deepytorch" in v:
        lines.append(f"with a ControlNet, DeepyTorch vs the peers: {v['cn-deepytorch']['speedup_vs_peer']:.2f}x")
    save(results, out, lines)


if __name__ == "__main__":
    main()
