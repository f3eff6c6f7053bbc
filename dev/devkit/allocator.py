"""The C allocator settings every timed benchmark process and the demo run with (`BENCH_MALLOC=default` keeps
glibc's own; not `benchmarks/inplace_memory.py`, whose RSS figures are glibc's defaults, as a user's process).

glibc's malloc moves its mmap threshold at run time and hands freed memory back to the OS, so one program runs at
two speeds between processes: its large temporaries are reused in one process and mapped fresh (page faults) on
every call in another. On this project's CPU eager ComfyUI (its sub-quadratic attention) took 4.0 to 6.3 s for the
same 3 flux-deep-narrow steps between processes, with 37 thousand to 1.8 million minor page faults; with the fixed
thresholds below, 3.8 to 3.9 s and almost none, while DeepyTorch's compiled steps did not change (their graphs
reuse their buffers). Fixed thresholds make ratios between processes compare compute. Other C libraries ignore
these variables."""
import os
import sys

STEADY = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),   # glibc's largest: smaller chunks come from the heap
          "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}   # and freed ones stay with the process


def steady():
    """Re-runs this process (same command line) once with STEADY in its environment, which the processes it starts
    inherit; returns what the results should say about the allocator."""
    if os.environ.get("BENCH_MALLOC", "steady") == "default":
        return "glibc defaults (BENCH_MALLOC=default)"
    if any(os.environ.get(k) != v for k, v in STEADY.items()):
        os.environ.update(STEADY)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
    return "glibc, fixed thresholds: " + " ".join(f"{k}={v}" for k, v in STEADY.items())
