"""TEST-ONLY: x-flux-comfyui's "Load Flux LoRA" builds its LoRA processors for FLUX's width, hard-coded as 3072, and
its "Load Flux ControlNet" builds a FLUX-dev-width ControlNet before it reads the file. As tiny_shim does for
ComfyUI, this takes the widths from the file's tensors when they are smaller (a tiny model's LoRA or ControlNet; the
ControlNet is first built on the meta device, so no full-width one is ever allocated); real-size files are
untouched.

x-flux-comfyui may load before or after this pack, so the patch is applied when a prompt is queued (an on-prompt
handler of the real server) to whichever x-flux module is loaded by then."""
import dataclasses
import sys

import torch

from devkit.widths import flux_dims


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


_tiny_controlnets = {}


def _tiny_aware_controlnet(cls):
    """`cls` (x-flux's ControlNetFlux) whose load_state_dict first builds itself at the checkpoint's widths."""
    if cls not in _tiny_controlnets:
        class TinyAwareControlNet(cls):
            deepytorch_tiny_shim = True

            def load_state_dict(self, state_dict, *args, **kwargs):
                device = self.deepytorch_device
                dims = flux_dims(state_dict)
                dims.update(in_channels=state_dict["img_in.weight"].shape[1])
                depth = len({k.split(".")[1] for k in state_dict if k.startswith("double_blocks.")})
                params = dataclasses.replace(self.params, **{k: v for k, v in dims.items()
                                                             if hasattr(self.params, k)})
                with torch.device(device):
                    cls.__init__(self, params, controlnet_depth=depth)
                return super().load_state_dict(state_dict, *args, **kwargs)
        TinyAwareControlNet.__name__ = TinyAwareControlNet.__qualname__ = cls.__name__
        _tiny_controlnets[cls] = TinyAwareControlNet
    return _tiny_controlnets[cls]


def _tiny_aware_load_controlnet(load_controlnet):
    def load(name, device, transformer=None):
        if transformer is not None:
            return load_controlnet(name, device, transformer)
        net = load_controlnet(name, "meta")
        net.__class__ = _tiny_aware_controlnet(type(net))
        net.deepytorch_device = device
        return net
    load.deepytorch_tiny_shim = True
    return load


def patch_loaded():
    """Patch every loaded x-flux-comfyui nodes module (the one that defines LoadFluxLora)."""
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)   # not getattr(): some modules (torch.ops) invent attributes
        if not isinstance(names, dict) or "LoadFluxLora" not in names:
            continue
        cls = names.get("DoubleStreamBlockLoraProcessor")
        if isinstance(cls, type) and not getattr(cls, "deepytorch_tiny_shim", False):
            module.DoubleStreamBlockLoraProcessor = _tiny_aware(cls)
        load = names.get("load_controlnet")
        if callable(load) and not getattr(load, "deepytorch_tiny_shim", False):
            module.load_controlnet = _tiny_aware_load_controlnet(load)


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
