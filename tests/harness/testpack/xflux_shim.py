"""TEST-ONLY: x-flux-comfyui's "Load Flux LoRA" builds its LoRA processors for FLUX's width, hard-coded as 3072, its
"Load Flux ControlNet" builds a FLUX-dev-width ControlNet before it reads the file, and its "Load Flux IPAdatpter"
builds the IP-adapter's image projection and 19 key / value processors at FLUX-dev's widths (T5 context 4096, hidden
3072, CLIP embeds 768). As tiny_shim does for ComfyUI, this takes the widths from the file's tensors when they are
smaller (a tiny model's LoRA, ControlNet or IP-adapter; the ControlNet and the IP-adapter's modules are first built
on the meta device, so no full-width one is ever allocated); real-size files are untouched.

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


def _picklable(shim, cls):
    """`shim` under `cls`'s name, found by that name in this module: DeepyTorch's precompiled regions pickle the
    classes of the modules a block calls (as they would x-flux's own IPProcessor)."""
    shim.__name__ = shim.__qualname__ = cls.__name__
    globals()[cls.__name__] = shim
    return shim


def _tiny_aware_ip_processor(cls):
    """x-flux's IPProcessor(context_dim, hidden_dim, ...): built on the meta device, rebuilt at the checkpoint's
    widths when its weights are loaded (the loader loads a ModuleList of them, "Apply Flux IPAdapter" each one)."""
    class TinyAwareIPProcessor(cls):
        deepytorch_tiny_shim = True

        def __init__(self, context_dim, hidden_dim, *args, **kwargs):
            self.deepytorch_args = (args, kwargs)
            with torch.device("meta"):
                super().__init__(context_dim, hidden_dim, *args, **kwargs)

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            weight = state_dict.get(prefix + "ip_adapter_double_stream_k_proj.weight")
            if weight is not None:
                a, k = self.deepytorch_args
                with torch.device("cpu"):
                    cls.__init__(self, weight.shape[1], weight.shape[0], *a, **k)
            return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
    return _picklable(TinyAwareIPProcessor, cls)


def _tiny_aware_image_proj(cls):
    """x-flux's ImageProjModel(cross_attention_dim, clip_embeddings_dim, tokens), likewise."""
    class TinyAwareImageProjModel(cls):
        deepytorch_tiny_shim = True

        def __init__(self, *args, **kwargs):
            with torch.device("meta"):
                super().__init__(*args, **kwargs)

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            proj, norm = state_dict.get(prefix + "proj.weight"), state_dict.get(prefix + "norm.weight")
            if proj is not None and norm is not None:
                with torch.device("cpu"):
                    cls.__init__(self, norm.shape[0], proj.shape[1], proj.shape[0] // norm.shape[0])
            return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
    return _picklable(TinyAwareImageProjModel, cls)


_SHIMS = {"DoubleStreamBlockLoraProcessor": _tiny_aware, "IPProcessor": _tiny_aware_ip_processor,
          "ImageProjModel": _tiny_aware_image_proj}


def patch_loaded():
    """Patch every loaded x-flux-comfyui nodes module (the one that defines LoadFluxLora)."""
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)   # not getattr(): some modules (torch.ops) invent attributes
        if not isinstance(names, dict) or "LoadFluxLora" not in names:
            continue
        for name, shim in _SHIMS.items():
            cls = names.get(name)
            if isinstance(cls, type) and not getattr(cls, "deepytorch_tiny_shim", False):
                setattr(module, name, shim(cls))
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
