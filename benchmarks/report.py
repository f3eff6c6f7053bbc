"""The benchmark's results: results.json, the markdown tables (results.md, printed) and the bar chart (results.png);
the arguments every benchmark script shares (device, resolution, model cache, output folder)."""
import json
import os

from devkit import allocator
from sizes import family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_args(ap, res):
    """The arguments of every benchmark script after its own: --device, --res (default `res`), --cache, --out."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--res", default=res)
    ap.add_argument("--cache", default="~/.cache/comfyui-deepytorch/bench")
    ap.add_argument("--out", default=None)


def parse(ap, kind):
    """ap's arguments, with width / height from --res and the default output folder test-artifacts/bench/<device>-
    <size>-<kind>; args.allocator: the C allocator's settings (the process runs again with them first)."""
    malloc = allocator.steady()
    args = ap.parse_args()
    args.allocator = malloc
    args.cache = os.path.expanduser(args.cache)
    args.width, args.height = map(int, args.res.split("x"))
    args.out = args.out or os.path.join(ROOT, "test-artifacts", "bench", f"{args.device}-{args.size}-{kind}")
    return args


def save(results, out, lines):
    """results.json and results.md (the markdown `lines`, also printed) in `out`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)


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
             f"{results.get('comfyui')}, torch {results.get('torch')}"
             f"{', allocator ' + results['allocator'] if results.get('allocator') else ''}"]
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
    if d.get("starts"):
        lines += ["", "DeepyTorch warm start (fresh processes; a new process with the cache an earlier one left):", "",
                  "| path | cold compile s | warm start s | warm / cold | started | steady x eager-SDPA, cold process "
                  "| steady x eager-SDPA, warm process |", "|---|---|---|---|---|---|---|"]
        for how, st in d["starts"].items():
            counts = st["warm"].get("start_counts") or {}
            started = f"{st['warm'].get('start')} ({counts.get('artifacts_loaded', 0)} artifacts loaded, " \
                      f"{counts.get('dynamo_graphs', 0)} dynamo graphs)"
            lines.append("| " + " | ".join([
                {"precompiled": "precompiled regions (default)", "traced": "DEEPYTORCH_PRECOMPILE=0 (re-traced)"}.get(
                    how, how), fmt(st["cold"]["compile_s"], 1), fmt(st["warm"]["compile_s"], 2),
                fmt(st["warm_over_cold"], 3), started, fmt(st["cold"].get("ratio_vs_eager_sdpa"), 2),
                fmt(st["warm"].get("ratio_vs_eager_sdpa"), 2)]) + " |")
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
