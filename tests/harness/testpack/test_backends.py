"""TEST-ONLY dynamo backends: one that always fails (to prove the eager fall-back), one whose graphs raise torch's
out-of-memory error while armed (to prove OOM reaches ComfyUI's own handling)."""
import torch

FAILING = "deepytorch_test_failing"
FAILURE_MESSAGE = "deliberate failure of the test backend"


def _failing(gm, example_inputs):
    raise RuntimeError(FAILURE_MESSAGE)


def register():
    if FAILING not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=FAILING)(_failing)
    register_oom()


OOM_ONCE = "deepytorch_test_oom_once"
OOM_MESSAGE = "deliberate out-of-memory of the test backend"
_oom_armed = []


def arm_oom(times=1):
    """The next `times` graph calls of the OOM_ONCE backend raise torch's out-of-memory error (CPU has no real OOM)."""
    _oom_armed.extend([True] * times)


def _oom_once(gm, example_inputs):
    def graph(*args):
        if _oom_armed:
            _oom_armed.pop()
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        return gm.forward(*args)
    return graph


def register_oom():
    if OOM_ONCE not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=OOM_ONCE)(_oom_once)
