"""The benchmark's and the demo's processes run with glibc's fixed malloc thresholds (dev/devkit/allocator.py): the
process runs once more with them set, the processes it starts inherit them, and BENCH_MALLOC=default keeps glibc's
own."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = ("import os, subprocess, sys; print('start', flush=True); sys.path.insert(0, {dev!r}); "
         "from devkit import allocator; print('said', allocator.steady()); "
         "print('child', subprocess.run([sys.executable, '-c', "
         "'import os; print(os.environ.get(\"MALLOC_MMAP_THRESHOLD_\"), os.environ.get(\"MALLOC_TRIM_THRESHOLD_\"))'], "
         "capture_output=True, text=True).stdout.strip())").format(dev=os.path.join(ROOT, "dev"))


def probe(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "BENCH_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_a_benchmark_process_runs_again_with_fixed_thresholds_and_its_children_inherit_them():
    lines = probe()
    assert lines == ["start", "start",
                     "said glibc, fixed thresholds: MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184",
                     "child 33554432 17179869184"]


def test_a_process_that_has_them_already_runs_once():
    lines = probe(MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="17179869184")
    assert lines[0] == "start" and lines[1].startswith("said glibc, fixed thresholds") and len(lines) == 3


def test_other_values_are_replaced_and_bench_malloc_default_keeps_glibcs_own():
    assert probe(MALLOC_MMAP_THRESHOLD_="65536")[-1] == "child 33554432 17179869184"
    assert probe(BENCH_MALLOC="default") == ["start", "said glibc defaults (BENCH_MALLOC=default)", "child None None"]
