"""TEST-ONLY route of a test server: GET /deepytorch-testpack/compiles -> what compiled in this process so far
(dynamo's graphs, DeepyTorch's precompiled artifacts baked and loaded), for tests that must tell that a prompt
compiled nothing (harness.counting.compiles_between)."""
import sys

ROUTE = "/deepytorch-testpack/compiles"


def counts():
    from torch._dynamo.utils import counters
    stats = {}
    for name, module in list(sys.modules.items()):   # the package's engine, under whatever name ComfyUI loaded it
        if name.endswith(".engine.precompiled") and isinstance(getattr(module, "STATS", None), dict):
            stats = module.STATS
    return {"unique_graphs": counters["stats"]["unique_graphs"], "bakes": stats.get("bakes", 0),
            "loads": stats.get("loads", 0)}


def install():
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):   # the in-process harness has no server
        return

    @routes.get(ROUTE)
    async def compiles(request):
        return web.json_response(counts())
