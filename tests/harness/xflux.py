"""A real ComfyUI server with XLabs' x-flux-comfyui loaded beside this package and the test pack (scripts/get-xflux
puts x-flux-comfyui in XFLUX_DIR). x-flux-comfyui creates models/xlabs/ inside the ComfyUI it runs in and its
"Load Flux LoRA" / "Load Flux ControlNet" / "Load Flux IPAdatpter" read ComfyUI/models/xlabs/loras/, xlabs/controlnets/
and xlabs/ipadapters/ only, so the server runs in a copy of the checkout made of hard links (the cached checkout stays
untouched) with the tiny XLabs LoRA, FLUX ControlNet and IP-adapter linked into those folders."""
import os
import shutil

from devkit.comfy_boot import PACKAGE_DIR_NAME
from devkit.locate import REPO_ROOT
from devkit.tiny_models import FILES
from devkit.xflux import XFLUX_DIR

from .server import TESTPACK, ComfyServer

MISSING = f"x-flux-comfyui not found in {XFLUX_DIR} (run scripts/get-xflux, or `make comfyui`)"


def available():
    return os.path.isfile(os.path.join(XFLUX_DIR, "nodes.py"))


def _link_tree(src, dst):
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    def ignore(folder, names):   # run-time folders at the top only (current ComfyUI has a comfy_api/input package)
        top = os.path.samefile(folder, src)
        return [n for n in names if n == "__pycache__" or (top and n in ("user", "output", "input", "temp"))]
    shutil.copytree(src, dst, copy_function=link, symlinks=True, ignore=ignore)


def start_server(comfy, base, extra_args=(), env=None):
    """Start it (raises if it does not come up); the caller stops it. `comfy`: the booted devkit.comfy_boot.Comfy
    whose tiny models the server uses."""
    comfy_dir = os.path.join(base, "comfyui")
    _link_tree(comfy.comfy_dir, comfy_dir)
    loras = os.path.join(comfy_dir, "models", "xlabs", "loras")
    os.makedirs(loras, exist_ok=True)
    sub, name = FILES["xlabs_lora"]
    os.symlink(os.path.join(comfy.models_dir, sub, name), os.path.join(loras, name))
    # "Load Flux ControlNet" reads ComfyUI/models/xlabs/controlnets/ only: the guide's canny ControlNet goes there
    controlnets = os.path.join(comfy_dir, "models", "xlabs", "controlnets")
    os.makedirs(controlnets, exist_ok=True)
    sub, name = FILES["flux_controlnet"]
    os.symlink(os.path.join(comfy.models_dir, sub, name), os.path.join(controlnets, name))
    # "Load Flux IPAdatpter" reads ComfyUI/models/xlabs/ipadapters/ only (its CLIP vision model: models/clip_vision/)
    ipadapters = os.path.join(comfy_dir, "models", "xlabs", "ipadapters")
    os.makedirs(ipadapters, exist_ok=True)
    sub, name = FILES["xlabs_ip_adapter"]
    os.symlink(os.path.join(comfy.models_dir, sub, name), os.path.join(ipadapters, name))
    nodes_dir = os.path.join(base, "custom_nodes")
    os.makedirs(nodes_dir)
    for name, target in ((PACKAGE_DIR_NAME, REPO_ROOT), ("deepytorch_testpack", TESTPACK),
                         ("x-flux-comfyui", XFLUX_DIR)):
        os.symlink(target, os.path.join(nodes_dir, name))
    server = ComfyServer(comfy_dir, os.path.join(base, "server"), comfy.models_dir, nodes_dir, extra_args, env=env)
    return server.start()


def load_problem(server):
    """Why x-flux-comfyui's nodes are missing from a started server (None if they are there)."""
    if "XlabsSampler" in server.object_info():
        return None
    lines = [line for line in server.log().splitlines() if "x-flux" in line or "Error" in line]
    return "x-flux-comfyui did not load in this ComfyUI: " + " | ".join(lines[-5:])
