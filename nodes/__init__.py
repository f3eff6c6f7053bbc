from .diffusion import ApplyDeepyTorchDiffusionModel

# Node ids are saved in users' workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": ApplyDeepyTorchDiffusionModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DeepyTorchApplyDiffusionModel": "Apply DeepyTorch to diffusion model",
}
