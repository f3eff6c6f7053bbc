"""Runtime patches to ComfyUI, applied from one place (`apply_all`, called by the package's __init__).

Each patch is idempotent, reversible and feature-detected; none edits ComfyUI's files.
"""
from . import auto_accelerate, inplace_update, sampling_runs


def apply_all():
    inplace_update.patch()
    auto_accelerate.patch()   # on top of inplace_update's wrappers: removed first
    sampling_runs.patch()


def unpatch_all():
    sampling_runs.unpatch()
    auto_accelerate.unpatch()
    inplace_update.unpatch()
