"""`GET /deepytorch/status`: 503 until the start-up warm-up (if any) has finished, done or failed, then 200; the JSON
says how the warm-up went, how every accelerated model started and where the compile cache is."""
import logging

from ..engine import compile_cache, regional
from . import warmup

log = logging.getLogger("deepytorch")
ROUTE = "/deepytorch/status"
_registered = []


def _default_cache_dir():
    try:
        from ..nodes.accelerate import default_cache_dir
        return default_cache_dir()
    except ImportError:
        return None


def snapshot():
    """The status as a dict (what the route returns)."""
    from ..patches import auto_accelerate
    state = warmup.state()
    return {
        "ready": state["state"] in ("none", "done", "failed"),
        "warmup": state,
        "models": [acc.describe() for acc in regional.live()],
        "cache": compile_cache.status(_default_cache_dir()),
        "auto": sorted(auto_accelerate.enabled()),
    }


def register(routes):
    """Add the route to ComfyUI's route table (before the server adds its routes to the app: custom nodes load
    first). Idempotent."""
    if _registered:
        return
    from aiohttp import web

    @routes.get(ROUTE)
    async def deepytorch_status(request):
        data = snapshot()
        return web.json_response(data, status=200 if data["ready"] else 503)

    _registered.append(deepytorch_status)
    log.info("DeepyTorch: status route %s registered (503 until the start-up warm-up has finished)", ROUTE)
