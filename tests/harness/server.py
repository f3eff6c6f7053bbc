"""The real ComfyUI server for the tests (devkit.server) and the test-only custom-node pack it loads."""
import os

from devkit.server import ComfyServer, free_port  # noqa: F401

# the test-only custom-node pack (tiny-model width shim, failing test backend, x-flux LoRA shim, a gate node)
TESTPACK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testpack")
