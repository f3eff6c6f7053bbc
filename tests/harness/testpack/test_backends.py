"""TEST-ONLY dynamo backends: one that always fails (to prove the eager fall-back)."""
import torch

FAILING = "deepytorch_test_failing"
FAILURE_MESSAGE = "deliberate failure of the test backend"


def _failing(gm, example_inputs):
    raise RuntimeError(FAILURE_MESSAGE)


def register():
    if FAILING not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=FAILING)(_failing)
