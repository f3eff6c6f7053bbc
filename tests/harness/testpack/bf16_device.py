"""TEST-ONLY stand-in for a bfloat16-capable CUDA device, in a test server started with DEEPYTORCH_TEST_BF16_DEVICE=1.

XlabsSampler computes in bfloat16 where `torch.cuda.is_bf16_supported()`, else in float16, and XLabs' IP-adapter
processors are always cast to bfloat16: on a CPU (float16) XlabsSampler fails with an IP-adapter (scaled dot-product
attention of a float16 query on bfloat16 keys). Users run it on bfloat16 GPUs; this answer lets the CPU test server
take that path (the model runs on the CPU in bfloat16). Only that server process is affected; ComfyUI asks this
question only on NVIDIA / Intel devices, so on the CPU it changes XLabs' and the DeepTorch Sampler's dtype only."""
import os

import torch

ENV = "DEEPYTORCH_TEST_BF16_DEVICE"


def install():
    if os.environ.get(ENV) == "1":
        torch.cuda.is_bf16_supported = lambda *args, **kwargs: True
