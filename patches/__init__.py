"""Runtime patches to ComfyUI, applied from one place (`apply_all`, called by the package's __init__).

Each patch is idempotent, reversible and feature-detected; none edits ComfyUI's files.
"""
from . import inplace_update


def apply_all():
    inplace_update.patch()


def unpatch_all():
    inplace_update.unpatch()
