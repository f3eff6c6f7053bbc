"""TEST-ONLY: x-flux-comfyui's "Load Flux LoRA" builds its LoRA processors for FLUX's width, hard-coded as 3072.
As tiny_shim does for ComfyUI, this swaps that number for the width read from the LoRA's tensors when they are
smaller (a tiny model's LoRA); real-size LoRAs are untouched.

x-flux-comfyui may load before or after this pack, so the patch is applied when a prompt is queued (an on-prompt
handler of the real server) to whichever x-flux module is loaded by then."""
import sys


def _tiny_aware(cls):
    class TinyAwareLoraProcessor(cls):
        deepytorch_tiny_shim = True

        def load_state_dict(self, state_dict, *args, **kwargs):
            down = state_dict.get("qkv_lora1.down.weight")
            if down is not None and down.shape[1] != self.qkv_lora1.down.in_features:
                cls.__init__(self, down.shape[1], rank=down.shape[0], lora_weight=self.lora_weight)
            return super().load_state_dict(state_dict, *args, **kwargs)
    TinyAwareLoraProcessor.__name__ = cls.__name__
    return TinyAwareLoraProcessor


def patch_loaded():
    """Patch every loaded x-flux-comfyui nodes module (the one that defines LoadFluxLora)."""
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)   # not getattr(): some modules (torch.ops) invent attributes
        if not isinstance(names, dict) or "LoadFluxLora" not in names:
            continue
        cls = names.get("DoubleStreamBlockLoraProcessor")
        if isinstance(cls, type) and not getattr(cls, "deepytorch_tiny_shim", False):
            module.DoubleStreamBlockLoraProcessor = _tiny_aware(cls)


def install():
    try:
        from server import PromptServer
        instance = PromptServer.instance
    except (ImportError, AttributeError):   # the in-process harness has no server (and no x-flux)
        return

    def on_prompt(json_data):
        patch_loaded()
        return json_data
    instance.add_on_prompt_handler(on_prompt)
