"""TEST DOUBLE for Alibaba's `deepytorch_inference` (documented as `deepytorch_inference.compile(m)` on a TorchScript module). NOT the real
package (it cannot be obtained here): it checks that it gets a TorchScript module, records it and returns it, so the
adapter's tracing and calling side is what the tests check."""
import torch

__version__ = "0.0.0+test-double"
received = []   # the TorchScript modules compile() got


def compile(module):
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"deepytorch_inference.compile expects a TorchScript module, got {type(module).__name__}")
    received.append(module)
    return module
