"""Compile backends behind one contract, and the `auto` choice between them.

A backend has `name`, `available() -> (bool, reason)` and `compile(module, options) -> callable`. The callable
has the signature of `module.forward` and is installed in place of it, so the module tree (and every state_dict /
LoRA key) stays untouched.
"""
from .base import CompileOptions
from .deepgpu import DeepGPUBackend
from .eager import EagerBackend
from .inductor import DynamoBackend, InductorBackend

from .. import log

BACKEND_CHOICES = ["auto", "deepgpu", "inductor", "eager"]
# `auto` tries these in order; the first usable one wins
AUTO_ORDER = ("deepgpu", "inductor", "eager")


def get_backend(name, device=None):
    """A backend instance by name: one of BACKEND_CHOICES or any registered dynamo backend."""
    if name == "deepgpu":
        return DeepGPUBackend()
    if name == "inductor":
        return InductorBackend(device)
    if name == "eager":
        return EagerBackend()
    return DynamoBackend(name)


def select_backend(name, device=None, what="model"):
    """Resolve `name` (or `auto`) to a usable backend; one INFO line says which and why the better ones were not."""
    if name != "auto":
        backend = get_backend(name, device)
        ok, reason = backend.available()
        if ok:
            log.info("%s: backend '%s' (chosen by the user; %s)", what, backend.name, reason)
            return backend
        log.warning("%s: backend '%s' is not usable (%s); running eager", what, name, reason)
        return EagerBackend()
    skipped = []
    for candidate in AUTO_ORDER:
        backend = get_backend(candidate, device)
        ok, reason = backend.available()
        if ok:
            why_not = "; ".join(skipped) if skipped else "it is the first choice"
            log.info("%s: auto chose backend '%s' (%s); skipped: %s", what, backend.name, reason, why_not)
            return backend
        skipped.append(f"{candidate}: {reason}")
    raise AssertionError("eager is always available")  # pragma: no cover


__all__ = ["BACKEND_CHOICES", "CompileOptions", "get_backend", "select_backend", "DeepGPUBackend",
           "EagerBackend", "InductorBackend", "DynamoBackend"]
