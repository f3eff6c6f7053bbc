"""TEST DOUBLE for a deepgpu-torch that registers a dynamo backend named 'deepgpu' (importable as `deepgpu_torch`).
NOT the real package: its backend runs the FX graph dynamo hands it as it is and counts the graphs it got."""
import torch

__version__ = "0.0.0+test-double"
graphs = []   # the FX graphs the backend received


def _backend(gm, example_inputs):
    graphs.append(gm)
    return gm.forward


if "deepgpu" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(name="deepgpu")(_backend)
