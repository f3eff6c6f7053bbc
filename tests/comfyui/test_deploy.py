"""The Function Compute files (deploy/function-compute) with the REAL ComfyUI server: its extra_model_paths.yaml
(the NAS/OSS mount at $MODELS_MOUNT, the compile cache on it) and function.env, no DEEPYTORCH_CACHE_DIR. Two
instances started at the same moment on one empty cache both return the eager image; the directory ends valid; a
third instance starts from it without dynamo tracing."""
import os

import re

import numpy as np
import pytest
import requests

from harness import workflows as wf
from harness.server import ComfyServer

TOL = 1   # 1/255: float32 CPU, compiled vs eager
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "function-compute")
GUIDE_FOLDERS = ("checkpoints", "unet", "clip", "vae", "loras")   # the tiny models, in the guide's layout


def function_env():
    env = {}
    for line in open(os.path.join(DEPLOY, "function.env")):
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    return env


def status(server):
    r = requests.get(server.url + "/deepytorch/status", timeout=30)
    assert r.status_code == 200
    return r.json()


def flux(data):
    (model,) = [m for m in data["models"] if m["label"] == "Flux"]
    return model


def image_comfyui_commit():
    """The ComfyUI commit the Function Compute image installs (the Dockerfile's COMFYUI_COMMIT)."""
    return re.search(r"^ARG COMFYUI_COMMIT=([0-9a-f]{40})$", open(os.path.join(DEPLOY, "Dockerfile")).read(),
                     re.M).group(1)


def test_function_compute_yaml_and_env_two_instances_on_one_empty_cache_then_a_warm_third(
        comfy, tmp_path_factory, eager_flux):
    # the image runs one ComfyUI commit: its files are tested on that checkout (the instance kit itself on every
    # version: test_instance.py); this case starts three servers that compile from empty, so not three times over
    pinned = os.path.join(comfy.comfy_dir, ".pinned-commit")
    commit = open(pinned).read().strip() if os.path.isfile(pinned) else None
    if commit is not None and commit != image_comfyui_commit():
        pytest.skip(f"the Function Compute image installs ComfyUI {image_comfyui_commit()[:8]}; this is "
                    f"{commit[:8]}")
    mount = tmp_path_factory.mktemp("mnt-models")
    for sub in GUIDE_FOLDERS:
        os.symlink(os.path.join(comfy.models_dir, sub), mount / sub)
    env = {**function_env(), "MODELS_MOUNT": str(mount), "DEEPYTORCH_CACHE_DIR": None}
    assert env["DEEPYTORCH_AUTO"] == "diffusion,vae"
    cache = str(mount / "deepytorch-compile-cache")

    def instance(name):
        return ComfyServer(comfy.comfy_dir, str(tmp_path_factory.mktemp(name)), None, comfy.custom_nodes_dir,
                           extra_args=["--extra-model-paths-config", os.path.join(DEPLOY, "extra_model_paths.yaml")],
                           env=env)

    first, second = instance("fc1").launch(), instance("fc2").launch()   # the same moment, one empty cache
    third = None
    try:
        first.wait_listening(), second.wait_listening()
        prompt = wf.flux_t2i(prefix="fc")                                    # plain: no DeepyTorch node
        ids = [s.queue(prompt) for s in (first, second)]
        images = [s.image(s.wait(i), "11") for s, i in zip((first, second), ids)]
        for s, img in zip((first, second), images):
            assert np.abs(img - eager_flux).max() <= TOL
            data = status(s)
            assert data["cache"] == {"dir": cache, "writable": True, "configured": True}
            assert flux(data)["compiled"] == 4 and flux(data)["failed"] is None
        names = os.listdir(os.path.join(cache, "precompiled"))
        assert names and all(n.endswith(".bin") and not n.startswith(".") for n in names), names   # no temp files

        third = instance("fc3").start()
        img = third.image(third.run(prompt), "11")
        model = flux(status(third))
        counts = model["start_counts"]
        assert model["start"] == "precompiled" and counts["dynamo_graphs"] == 0
        assert counts["artifacts_loaded"] >= 2 and counts["artifacts_ignored"] == 0   # every file it read was valid
        assert np.abs(img - eager_flux).max() <= TOL
        assert "DeepyTorch: Flux: 4 region(s) started from" in third.log()
    finally:
        for s in (first, second, third):
            if s is not None:
                s.stop()
