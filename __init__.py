"""ComfyUI-DeepyTorch: registers the nodes and applies the runtime patches (once, from here)."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .patches import apply_all

apply_all()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
