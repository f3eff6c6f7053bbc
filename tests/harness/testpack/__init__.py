"""TEST-ONLY custom-node pack loaded beside ComfyUI-DeepyTorch by the test harness (in-process and in the real
server). It installs the tiny-model width shim and registers test-only backends; it is never shipped to users."""
from . import test_backends, tiny_shim

tiny_shim.install()
test_backends.register()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
