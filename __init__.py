"""ComfyUI-DeepyTorch: registers the nodes, applies the runtime patches and starts the instance kit (status route,
start-up warm-up), once, from here."""
from .instance import start as start_instance_kit
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .patches import apply_all

apply_all()
start_instance_kit()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
