"""TEST-ONLY custom-node pack loaded beside ComfyUI-DeepyTorch by the test harness (in-process and in the real
server). It installs the tiny-model width shims (ComfyUI; x-flux-comfyui's LoRA loader
where that pack is loaded too) and registers test-only backends; it is never shipped to users."""
from . import test_backends, tiny_shim, xflux_shim

tiny_shim.install()
test_backends.register()
xflux_shim.install()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
