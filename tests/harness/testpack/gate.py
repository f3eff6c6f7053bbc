"""TEST-ONLY node: passes a LATENT through once a file exists, so a test can hold a prompt (the start-up warm-up)
mid-run and look at the server meanwhile."""
import os
import time


class TestOnlyLatentGate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {"tooltip": "passed through"}),
                             "path": ("STRING", {"default": "", "tooltip": "wait until this file exists"})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "wait"
    CATEGORY = "testing"

    def wait(self, samples, path):
        deadline = time.time() + 120
        while not os.path.exists(path):
            if time.time() > deadline:
                raise TimeoutError(f"gate file {path} did not appear within 120 s")
            time.sleep(0.1)
        return (samples,)
