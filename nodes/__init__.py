from .diffusion import ApplyDeepyTorchDiffusionModel
from .vae import ApplyDeepyTorchVAE
from .controlnet import ApplyDeepyTorchControlNet
from .sampler import DeepTorchXlabsSampler
from .step_cache import ApplyDeepyTorchStepCache

# Node ids are saved in users' workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": ApplyDeepyTorchDiffusionModel,
    "DeepyTorchApplyVAE": ApplyDeepyTorchVAE,
    "DeepTorchXlabsSampler": DeepTorchXlabsSampler,
    "DeepyTorchApplyControlNet": ApplyDeepyTorchControlNet,
    "DeepyTorchStepCache": ApplyDeepyTorchStepCache,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": "Apply DeepyTorch to diffusion model",
    "DeepyTorchApplyVAE": "Apply DeepyTorch to vae model",
    "DeepTorchXlabsSampler": "DeepTorch Sampler to replace XlabsSampler",
    "DeepyTorchApplyControlNet": "Apply DeepyTorch to controlnet",
    "DeepyTorchStepCache": "Apply DeepyTorch step cache",
}
