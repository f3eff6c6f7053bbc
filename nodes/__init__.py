from .diffusion import ApplyDeepyTorchDiffusionModel
from .vae import ApplyDeepyTorchVAE
from .controlnet import ApplyDeepyTorchControlNet
from .sampler import DeepTorchXlabsSampler

# Node ids are saved in users' workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": ApplyDeepyTorchDiffusionModel,
    "DeepyTorchApplyVAE": ApplyDeepyTorchVAE,
    "DeepTorchXlabsSampler": DeepTorchXlabsSampler,
    "DeepyTorchApplyControlNet": ApplyDeepyTorchControlNet,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": "Apply DeepyTorch to diffusion model",
    "DeepyTorchApplyVAE": "Apply DeepyTorch to vae model",
    "DeepTorchXlabsSampler": "DeepTorch Sampler to replace XlabsSampler",
    "DeepyTorchApplyControlNet": "Apply DeepyTorch to controlnet",
}
