from .diffusion import ApplyDeepyTorchDiffusionModel
from .vae import ApplyDeepyTorchVAE

# Node ids are saved in users' workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": ApplyDeepyTorchDiffusionModel,
    "DeepyTorchApplyVAE": ApplyDeepyTorchVAE,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": "Apply DeepyTorch to diffusion model",
    "DeepyTorchApplyVAE": "Apply DeepyTorch to vae model",
}
