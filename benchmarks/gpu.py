#!/usr/bin/env python3
"""The one GPU entry point (`make bench-gpu`, or `bash scripts/bench-gpu` on the borrowed GPU machine): the
benchmark's phases in priority order, each a `benchmarks/run.py` process, run while the budget lasts; a phase whose
estimate no longer fits is dropped (said in the results), a phase that overruns is stopped. Models are built in
memory on the GPU in bf16 and loaded through ComfyUI's own loader function (no 24 GB file).

  python benchmarks/gpu.py [--budget 540] [--out DIR] [--only PHASE,...]
  python benchmarks/gpu.py --dry-run     the same phases at --size tiny on this CPU, the GPU image rehearsed
                                         (devkit.gpu_image), to keep this script from rotting (make test runs it)
Writes DIR/results.json (every phase's results), DIR/results.md (their tables) and DIR/log.txt: 3 files, within
what the device tool brings back.

Other issues add their GPU phases to PHASES, with a priority: the lowest go first when the budget is short.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")

# name: (priority, estimated seconds on an H200, run.py arguments). FLUX-dev 768x1024 20 steps and SDXL 1024x1024 are
# the settings; the estimates are guesses until a GPU run replaces them with its own times (results.json).
PHASES = {
    "flux-dev-ksampler": (1, 300, ["--size", "flux-dev", "--res", "768x1024", "--steps", "20", "--repeats", "3",
                                   "--variants", "eager,peer,deepytorch", "--phases", "steady",
                                   "--paths", "ksampler"]),
    "flux-dev-compile": (2, 240, ["--size", "flux-dev", "--res", "768x1024", "--steps", "20", "--variants",
                                  "deepytorch,peer", "--phases", "fresh", "--starts", "precompiled",
                                  "--interleave-fresh", "0"]),
    "flux-dev-deeptorch-sampler": (3, 200, ["--size", "flux-dev", "--res", "768x1024", "--steps", "20",
                                            "--repeats", "3", "--variants", "eager,deepytorch", "--phases", "steady",
                                            "--paths", "deeptorch-sampler"]),
    "sdxl-ksampler": (4, 240, ["--size", "sdxl", "--res", "1024x1024", "--steps", "20", "--repeats", "3",
                               "--variants", "eager,peer,deepytorch", "--phases", "steady"]),
    "flux-dev-recompiles": (5, 200, ["--size", "flux-dev", "--res", "768x1024", "--variants", "deepytorch",
                                     "--phases", "recompiles"]),
}
# --dry-run: FLUX phases at the tiny size on CPU (fresh processes for DeepyTorch only: the peer's runs in the
# steady phase); SDXL has no size small enough for the suite (dropped, said so)
DRY = {"--size": "tiny", "--res": "128x128", "--steps": "2", "--repeats": "1", "--variants": None}
DRY_ESTIMATE = 60


def phase_args(args, name):
    priority, estimate, extra = PHASES[name]
    extra = list(extra)
    if args.dry_run:
        if "sdxl" in extra[extra.index("--size") + 1]:
            return None, estimate
        for flag, value in DRY.items():
            if flag in extra and value is not None:
                extra[extra.index(flag) + 1] = value
        if "fresh" in extra:
            extra[extra.index("--variants") + 1] = "deepytorch"
        estimate = DRY_ESTIMATE
    return extra, estimate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=540, help="seconds for all phases (the device tool allows "
                    "600 per command)")
    ap.add_argument("--out", default=os.path.join(ROOT, "test-artifacts", "bench", "gpu"))
    ap.add_argument("--only", default=None, help="comma-separated phase names")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["DEEPYTORCH_REHEARSE_GPU_IMAGE"] = "1"
    start = time.monotonic()
    info = machine(env)
    results = {"machine": info, "budget_s": args.budget, "dry_run": args.dry_run, "phases": {}}
    log = open(os.path.join(args.out, "log.txt"), "w")
    wanted = args.only.split(",") if args.only else list(PHASES)
    for name in sorted(wanted, key=lambda n: PHASES[n][0]):
        extra, estimate = phase_args(args, name)
        left = args.budget - (time.monotonic() - start)
        if extra is None:
            results["phases"][name] = {"status": "dropped", "why": "no SDXL size small enough for a CPU dry run"}
            continue
        if estimate > left:
            results["phases"][name] = {"status": "dropped", "why": f"estimate {estimate:.0f} s > {left:.0f} s left"}
            continue
        out = tempfile.mkdtemp(prefix=f"deepytorch-gpu-{name}-")
        cmd = [sys.executable, RUN, "--device", device, "--out", out, "--timeout", str(int(left))] + extra
        t0 = time.monotonic()
        log.write(f"== {name}: {' '.join(cmd)}\n")
        log.flush()
        try:
            p = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=left)
            status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode}; log.txt)"
        except subprocess.TimeoutExpired:
            status = "stopped: over the budget"
        entry = {"status": status, "seconds": round(time.monotonic() - t0, 1), "args": extra}
        path = os.path.join(out, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                entry["results"] = json.load(f)
            with open(os.path.join(out, "results.md")) as f:
                entry["table"] = f.read()
        results["phases"][name] = entry
        print(f"bench-gpu: {name}: {status} in {entry['seconds']} s", flush=True)
    results["seconds"] = round(time.monotonic() - start, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"DeepyTorch GPU benchmark: {info.get('device_name')}, torch {info.get('torch')}, triton "
             f"{info.get('triton')}, commit {info.get('commit')}{' (dry run, CPU)' if args.dry_run else ''}; "
             f"{results['seconds']} s of a {args.budget:.0f} s budget", ""]
    for name, entry in results["phases"].items():
        lines.append(f"## {name}: {entry['status']}" + (f" ({entry['why']})" if "why" in entry else "")
                     + (f", {entry['seconds']} s" if "seconds" in entry else ""))
        if entry.get("table"):
            lines += ["", entry["table"]]
        lines.append("")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(e["status"] in ("ok", "dropped") for e in results["phases"].values()) else 1


def machine(env):
    """The device, torch and triton this run uses, from a child process (the one the phases use)."""
    code = ("import json, torch\n"
            "try:\n import triton; t = triton.__version__\nexcept ImportError:\n t = None\n"
            "name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'\n"
            "print(json.dumps({'device_name': name, 'torch': torch.__version__, 'triton': t}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}
    from run import git_commit
    info["commit"] = git_commit()
    if info["commit"] is None and os.path.isfile(os.path.join(ROOT, ".gpu", "COMMIT")):
        with open(os.path.join(ROOT, ".gpu", "COMMIT")) as f:   # written by scripts/prepare-gpu-carry
            info["commit"] = f.read().strip()
    return info


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sys.exit(main())
