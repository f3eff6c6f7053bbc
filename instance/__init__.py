"""The serverless instance kit: `GET /deepytorch/status` on ComfyUI's own server (readiness for a platform's health
check) and the start-up warm-up (`DEEPYTORCH_WARMUP`). Started once from the package's __init__; does nothing where
no ComfyUI server runs (a headless executor, the tests' in-process ComfyUI)."""
import logging

from . import status, warmup

log = logging.getLogger("deepytorch")


def start():
    """Register the status route and start the warm-up thread (idempotent). Returns True if a server was found."""
    try:
        import server
    except ImportError:
        return False
    instance = getattr(server.PromptServer, "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return False
    from ..nodes.accelerate import register_cache_folder
    register_cache_folder()   # before any model loads, where extra_model_paths.yaml could not map it
    status.register(instance.routes)
    warmup.start()
    return True
