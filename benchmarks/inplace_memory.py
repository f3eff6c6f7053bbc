"""Host memory of the in-place LoRA patch: a model that never goes through a DeepyTorch node, with a LoRA on every
linear layer of its blocks, sampled once through ComfyUI's KSampler path, in a fresh process per setting
(DEEPYTORCH_INPLACE_UPDATE=1: the loader patch on, ComfyUI patches the weights in place; =0: stock ComfyUI, which
replaces the patched tensors). Peak RSS (getrusage) and RSS after sampling, runs of the two settings interleaved.

  python benchmarks/inplace_memory.py [--size flux-deep-narrow] [--runs 2] [--out benchmarks/results/...]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "dev"), os.path.join(ROOT, "benchmarks")]


def mib(n):
    return n / 2**20


def child(args):
    os.environ["DEEPYTORCH_INPLACE_UPDATE"] = "1" if args.inplace else "0"
    import psutil
    from safetensors.torch import save_file
    from devkit import models
    from sampling import Bench
    b = Bench(args)
    import folder_paths
    sd = {k[len("diffusion_model."):]: v for k, v in b.base.model.state_dict().items()
          if k.startswith("diffusion_model.")}
    targets = [k[:-len(".weight")] for k, v in sd.items() if k.startswith(("double_blocks.", "single_blocks."))
               and k.endswith(".weight") and v.dim() == 2]
    name = f"bench-{args.size}-lora-all-linear.safetensors"
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], name)
    if not os.path.exists(path):
        save_file(models.flux_lora(sd, rank=16, targets=targets), path)
    rss_loaded = mib(psutil.Process().memory_info().rss)
    lora = b.nodes.LoraLoaderModelOnly().load_lora_model_only(b.base, name, 1.0)[0]
    patched = sum(sd[t + ".weight"].numel() * sd[t + ".weight"].element_size() for t in targets)
    b.sample(lora, 256, 256, 1)
    print("RESULT " + json.dumps({
        "inplace": bool(args.inplace), "weight_inplace_update": bool(lora.weight_inplace_update),
        "model_mib": round(mib(sum(v.numel() * v.element_size() for v in sd.values())), 1),
        "patched_mib": round(mib(patched), 1), "patched_tensors": len(targets),
        "rss_loaded_mib": round(rss_loaded, 1), "rss_after_mib": round(mib(psutil.Process().memory_info().rss), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="flux-deep-narrow")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default="~/.cache/comfyui-deepytorch/bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--inplace", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = []
    for run in range(args.runs):
        for inplace in (1, 0):
            cmd = [sys.executable, __file__, "--child", "--inplace", str(inplace), "--size", args.size,
                   "--device", args.device, "--cache", args.cache]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"inplace_memory: the run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            rows.append(dict(json.loads(line[len("RESULT "):]), run=run))
            print(f"[memory {time.strftime('%H:%M:%S')}] {rows[-1]}", flush=True)
    table = ["| loader patch | weight_inplace_update | model MiB | patched MiB (tensors) | RSS loaded MiB | "
             "RSS after sampling MiB | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {'on' if r['inplace'] else 'off (DEEPYTORCH_INPLACE_UPDATE=0)'} | "
                     f"{r['weight_inplace_update']} | {r['model_mib']} | {r['patched_mib']} ({r['patched_tensors']}) | "
                     f"{r['rss_loaded_mib']} | {r['rss_after_mib']} | {r['peak_rss_mib']} |")
    print("\n".join(table))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(f"{args.size}, one LoRA (rank 16) on every block linear, 1 KSampler step at 256x256, "
                    f"{args.device}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
