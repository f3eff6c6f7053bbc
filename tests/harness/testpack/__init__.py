"""TEST-ONLY custom-node pack loaded beside ComfyUI-DeepyTorch by the test harness (in-process and in the real
server). It installs the tiny-model width shims (ComfyUI; x-flux-comfyui's LoRA, ControlNet and
IP-adapter loaders where that pack is loaded too), the bfloat16-device stand-in where a test server asks for it and registers test-only backends, a test-only node (a gate that holds a prompt) and a route that counts compiles; it is never shipped to users."""
import os
import sys

# devkit (dev/devkit: the tiny-model width shim), in the real server subprocess too; realpath: ComfyUI loads this
# pack through a symlink
_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))),
                    "dev")
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from devkit import tiny_shim  # noqa: E402

from . import bf16_device, compile_counts, gate, test_backends, xflux_shim  # noqa: E402

tiny_shim.install()
test_backends.register()
xflux_shim.install()
bf16_device.install()
compile_counts.install()

NODE_CLASS_MAPPINGS = {"TestOnlyLatentGate": gate.TestOnlyLatentGate}
NODE_DISPLAY_NAME_MAPPINGS = {}
