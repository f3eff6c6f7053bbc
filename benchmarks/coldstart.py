#!/usr/bin/env python3
"""Time to first image of a new ComfyUI instance (`make bench-coldstart`): each instance is a new `main.py` process
(the real server), timed from process start to listening, to its first prompt's image, and the second prompt's.

Instance kinds (each run --runs times, interleaved, medians reported; eager ComfyUI is bimodal between processes):
  eager    ComfyUI as shipped, the workflow without DeepyTorch node
  empty    DeepyTorch with an empty compile cache (the first instance of a deployment)
  warm     DeepyTorch with the cache an earlier instance left (every later instance)
  warmup   warm + DEEPYTORCH_WARMUP=<the same workflow>: time to ready (/deepytorch/status 200), then the first
           request's latency
The workflow: UNETLoader (the benchmark's model) + random conditioning of its widths (the bench pack; text encoding
is not timed) + KSampler (euler, cfg 1) + VAEDecode (a tiny VAE) + SaveImage; DeepyTorch kinds add "Apply DeepyTorch
to diffusion model" with its defaults.

  python benchmarks/coldstart.py [--size flux-deep-narrow] [--res 512x512] [--steps 20] [--runs 3] [--empty-runs N]
  python benchmarks/coldstart.py --workflow my_api_workflow.json   # a user's own workflow, models in place
Writes <out>/coldstart.json and coldstart.md; prints the table.
"""
import argparse
import copy
import json
import os
import re
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))

from sizes import SDXL_UNET, SIZES, TEXT_TOKENS, family, model_file, say  # noqa: E402
from devkit import allocator  # noqa: E402
from devkit.scratch import scratch_dir  # noqa: E402

KINDS = ("eager", "empty", "warm", "warmup")
# the end of a sampler's progress bar in ComfyUI's log (tqdm: "20/20 [00:09<00:00,  2.10it/s]"), whose rate is tqdm's
# smoothed one: the steady per-step speed of that request, without its text encoding and VAE decode
PROGRESS = re.compile(r"(\d+)/(\d+) \[[\d:]+<[\d:?]+,\s*([\d.]+)(it/s|s/it)\]")


def last_step_s(log):
    """s/step at the end of the last finished progress bar in a server log, or None."""
    done = [m for m in PROGRESS.finditer(log) if m.group(1) == m.group(2)]
    if not done:
        return None
    rate = float(done[-1].group(3))
    return 1 / rate if done[-1].group(4) == "it/s" else rate


ACCEL = "DeepyTorchApplyDiffusionModel"


def workflow(size, unet, names, width, height, steps, accelerate):
    flux = family(size) == "flux"
    dims = SIZES[size]
    cond = {"family": family(size), "tokens": TEXT_TOKENS[family(size)], "seed": 0,
            "context_dim": dims["context_in_dim"] if flux else SDXL_UNET["context_dim"],
            "pooled_dim": dims["vec_in_dim"] if flux else 1280}
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "BenchConditioning", "inputs": cond},
        "7": {"class_type": "EmptySD3LatentImage" if flux else "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["7", 0], "seed": 0, "steps": steps, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0] if flux else ["3", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "coldstart"}},
    }
    p["3"] = ({"class_type": "VAELoader", "inputs": {"vae_name": names["flux_vae"]}} if flux else
              {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names["sdxl"]}})   # its tiny VAE
    if accelerate:
        p["21"] = {"class_type": ACCEL, "inputs": {"model": ["1", 0], "backend": "auto", "mode": "default",
                                                   "dynamic": "auto", "scope": "regional", "fullgraph": False,
                                                   "attention": "auto"}}
        p["9"]["inputs"]["model"] = ["21", 0]
    return p


def with_seed(prompt, seed):
    p = copy.deepcopy(prompt)
    for node in p.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced", "BenchConditioning"):
            key = "noise_seed" if "noise_seed" in node["inputs"] else "seed"
            if not isinstance(node["inputs"].get(key), list):
                node["inputs"][key] = seed
    return p


def bypassed(prompt):
    """The prompt with every DeepyTorch node bypassed (its MODEL/VAE input routed to its consumers)."""
    p = copy.deepcopy(prompt)
    ours = {k: v for k, v in p.items() if v["class_type"].startswith("DeepyTorchApply")}
    for node_id, node in ours.items():
        source = next(v for v in node["inputs"].values() if isinstance(v, list))
        for other in p.values():
            for name, value in other["inputs"].items():
                if isinstance(value, list) and value[0] == node_id:
                    other["inputs"][name] = source
    return {k: v for k, v in p.items() if k not in ours}


class Instance:
    def __init__(self, args, kind, cache, prompt_file):
        from devkit.server import ComfyServer
        env = {"TORCHINDUCTOR_CACHE_DIR": None, "DEEPYTORCH_CACHE_DIR": cache, "DEEPYTORCH_WARMUP": None,
               "DEEPYTORCH_AUTO": None}
        if kind == "warmup":
            env["DEEPYTORCH_WARMUP"] = prompt_file
        self.server = ComfyServer(args.comfy_dir, scratch_dir(f"deepytorch-coldstart-{kind}-"),
                                  args.models_dir, args.custom_nodes, env=env, cpu=args.device == "cpu",
                                  extra_args=[] if args.device == "cpu" else ["--gpu-only"])
        self.kind = kind

    def measure(self, prompt, timeout):
        import requests
        s = self.server
        t0 = time.perf_counter()
        s.launch()
        try:
            s.wait_listening(timeout=600)
            out = {"listening_s": time.perf_counter() - t0}
            if self.kind == "warmup":
                deadline = time.time() + timeout
                while requests.get(s.url + "/deepytorch/status", timeout=30).status_code != 200:
                    if time.time() > deadline:
                        raise TimeoutError("warm-up did not finish")
                    time.sleep(0.1)
                out["ready_s"] = time.perf_counter() - t0
                warm = requests.get(s.url + "/deepytorch/status", timeout=30).json()["warmup"]
                if warm["state"] != "done":
                    raise RuntimeError(f"warm-up failed: {warm['error']}")
            t1 = time.perf_counter()
            s.run(with_seed(prompt, 1), timeout=timeout)
            out["first_image_s"] = time.perf_counter() - t0
            out["first_latency_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            entry = s.run(with_seed(prompt, 2), timeout=timeout)
            out["second_latency_s"] = time.perf_counter() - t2
            step = last_step_s(s.log())
            if step is not None:
                out["second_step_s"] = step
            node = next((n for n, o in entry["outputs"].items() if o.get("images")), None)
            self.image = s.image(entry, node) if node is not None else None   # the second request's
            if self.kind != "eager":
                models = requests.get(s.url + "/deepytorch/status", timeout=30).json()["models"]
                out["start"] = [m["start"] for m in models if not m["label"].startswith("VAE")]
            return out
        finally:
            s.stop()


def table(results, runs):
    rows = ["| instance | process start → listening s | → ready s | → first image s | first request s | "
            "second request s | second request s/step | first image × eager's | steps × faster than eager's | "
            "started | image vs eager (max, /255) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    med = {}
    for kind, measured in results.items():
        keys = {k for m in measured for k in m if k.endswith("_s")}
        med[kind] = {k: statistics.median(m[k] for m in measured if k in m) for k in sorted(keys)}
    eager = med.get("eager", {}).get("first_image_s")
    eager_step = med.get("eager", {}).get("second_step_s")
    for kind, m in med.items():
        starts = sorted({",".join(filter(None, r.get("start") or [])) for r in results[kind]} - {""})
        ready = f"{m['ready_s']:.1f}" if "ready_s" in m else "-"
        ratio = f"{m['first_image_s'] / eager:.2f}" if eager else "-"
        step = f"{m['second_step_s']:.3f}" if "second_step_s" in m else "-"
        faster = f"{eager_step / m['second_step_s']:.2f}" if eager_step and "second_step_s" in m else "-"
        rows.append(f"| {kind} | {m['listening_s']:.1f} | {ready} | {m['first_image_s']:.1f} | "
                    f"{m['first_latency_s']:.1f} | {m['second_latency_s']:.1f} | {step} | {ratio} | {faster} | "
                    f"{'; '.join(starts) or '-'} | "
                    f"{max((r['max_diff_vs_eager'] for r in results[kind] if 'max_diff_vs_eager' in r), default='-')} |")
    return "\n".join(rows), med


def main():
    malloc = allocator.steady()   # the server processes inherit it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="flux-deep-narrow", choices=[s for s in SIZES if s != "tiny"] + ["tiny"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--res", default="512x512")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--empty-runs", type=int, default=None,
                    help="runs of the empty-cache kind (default --runs; its compile dominates a slow model's run)")
    ap.add_argument("--workflow", default=None, help="your own API-format workflow (models already in place)")
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: the newest the tests use)")
    ap.add_argument("--cache", default="~/.cache/comfyui-deepytorch/bench")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    width, height = map(int, args.res.split("x"))
    from devkit.locate import checkouts
    args.comfy_dir = args.comfyui or checkouts()[-1][1]
    work = scratch_dir("deepytorch-coldstart-")
    args.custom_nodes = os.path.join(work, "custom_nodes")
    os.makedirs(args.custom_nodes)
    os.symlink(ROOT, os.path.join(args.custom_nodes, "ComfyUI-DeepyTorch"))
    os.symlink(os.path.join(ROOT, "dev", "benchpack"), os.path.join(args.custom_nodes, "deepytorch_benchpack"))
    if args.workflow:
        with open(args.workflow) as f:
            shipped = json.load(f)
        args.models_dir = None   # the user's own ComfyUI model folders
        prompts = {"eager": bypassed(shipped), "deepytorch": shipped}
        label = os.path.basename(args.workflow)
    else:
        from devkit.comfy_boot import Comfy
        Comfy(args.comfy_dir, os.path.join(work, "builder"), device=args.device)   # the files: ComfyUI's own classes
        import torch
        from devkit import tiny_models
        args.models_dir = os.path.join(os.path.expanduser(args.cache), "models")
        unet, _ = model_file(args.models_dir, args.size,
                             torch.float32 if args.device == "cpu" else torch.bfloat16)
        tiny_models.generate(args.models_dir)
        names = tiny_models.NAMES
        prompts = {"eager": workflow(args.size, unet, names, width, height, args.steps, False),
                   "deepytorch": workflow(args.size, unet, names, width, height, args.steps, True)}
        label = f"{args.size}, {width}x{height}, {args.steps} steps"
    prompt_file = os.path.join(work, "warmup.json")
    with open(prompt_file, "w") as f:
        json.dump(with_seed(prompts["deepytorch"], 0), f)
    kinds = [k for k in args.kinds.split(",") if k]
    results = {k: [] for k in kinds}
    warm_cache = os.path.join(work, "cache-warm")
    eager_image = {}
    for r in range(args.runs):
        for kind in kinds:
            if kind == "empty" and args.empty_runs is not None and r >= args.empty_runs:
                continue
            if kind == "empty" or (kind in ("warm", "warmup") and not os.path.isdir(warm_cache)):
                cache = os.path.join(work, f"cache-empty-{r}")
            else:
                cache = warm_cache
            prompt = prompts["eager" if kind == "eager" else "deepytorch"]
            say(f"run {r + 1}/{args.runs}: {kind} instance ({label})")
            instance = Instance(args, kind, cache, prompt_file)
            m = instance.measure(prompt, args.timeout)
            if kind == "eager":
                eager_image[r] = instance.image
            elif eager_image.get(r) is not None and instance.image is not None:
                m["max_diff_vs_eager"] = int(abs(instance.image - eager_image[r]).max())   # same seed, in 1/255
            if kind == "empty" and not os.path.isdir(warm_cache):
                shutil.copytree(cache, warm_cache)   # what the first instance left: every later one starts from it
            say("  " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
            results[kind].append(m)
    text, med = table(results, args.runs)
    head = (f"DeepyTorch cold-start benchmark: {label}, device {args.device}, {args.runs} run(s) per instance kind "
            f"(medians), ComfyUI {os.path.basename(args.comfy_dir)}, allocator {malloc}")
    print("\n" + head + "\n\n" + text)
    out = args.out or os.path.join(ROOT, "test-artifacts", "bench", f"{args.device}-{args.size}-coldstart")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "coldstart.json"), "w") as f:
        json.dump({"label": label, "device": args.device, "allocator": malloc, "runs": results, "medians": med}, f,
                  indent=1)
    with open(os.path.join(out, "coldstart.md"), "w") as f:
        f.write(head + "\n\n" + text + "\n")
    say(f"wrote {out}/coldstart.md")


if __name__ == "__main__":
    main()
