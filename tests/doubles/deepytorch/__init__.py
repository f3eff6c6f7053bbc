"""TEST DOUBLE for Alibaba DeepGPU's `deepytorch` package (deepgpu-torch). NOT the real package: that one is
proprietary, for torch 2.5 + cu124 only, and cannot be obtained here. It offers the `compile(module, **options) ->
callable` entry point and records what it received, so tests can check the adapter's side. Like a real compiler it
returns something that calls the module it got (a module whose forward led back to DeepyTorch's region would
recurse)."""
import os

__version__ = "0.0.0+test-double"
received = []   # (module, options, env vars seen at compile time)


def compile(module, **options):
    received.append((module, dict(options), {k: os.environ.get(k) for k in
                                             ("DEEPGPU_PUB_LS", "DEEPGPU_ENABLE_FLUX_LORA")}))
    return module
