"""TEST-ONLY custom-node pack loaded beside ComfyUI-DeepyTorch by the test harness (in-process and in the real
server). It installs the tiny-model width shims (ComfyUI; x-flux-comfyui's LoRA loader
where that pack is loaded too) and registers test-only backends and a test-only node (a gate that holds a prompt); it is never shipped to users."""
import os
import sys

# devkit (dev/devkit: the tiny-model width shim), in the real server subprocess too; realpath: ComfyUI loads this
# pack through a symlink
_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))),
                    "dev")
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from devkit import tiny_shim  # noqa: E402

from . import gate, test_backends, xflux_shim  # noqa: E402

tiny_shim.install()
test_backends.register()
xflux_shim.install()

NODE_CLASS_MAPPINGS = {"TestOnlyLatentGate": gate.TestOnlyLatentGate}
NODE_DISPLAY_NAME_MAPPINGS = {}
