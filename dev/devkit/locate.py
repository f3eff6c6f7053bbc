"""Where the ComfyUI checkouts are: COMFYUI_PATH, else the ComfyUI this package is installed in, else the cache."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("COMFYUI_CACHE", os.path.expanduser("~/.cache/comfyui-deepytorch/comfyui"))
PINS = {"v0.3.6": "8e4118c0", "v0.3.7": "9a616b81", "current": "a125cd84"}
HOW_TO_GET = ("no ComfyUI found: run `make comfyui` (scripts/get-comfyui; set COMFYUI_REPO to a local clone if "
              "GitHub is out of reach) or set COMFYUI_PATH to a ComfyUI checkout")


def _is_comfy(path):
    return path and os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def checkouts():
    """[(name, path)] in the order the test matrix runs them."""
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        return [(describe(explicit), os.path.abspath(explicit))] if _is_comfy(explicit) else []
    host = os.path.abspath(os.path.join(REPO_ROOT, "..", ".."))
    if _is_comfy(host):
        return [(describe(host), host)]
    found = []
    for name in list(PINS) + sorted(set(os.listdir(CACHE)) - set(PINS) if os.path.isdir(CACHE) else []):
        path = os.path.join(CACHE, name)
        if _is_comfy(path):
            found.append((describe(path), path))
    return found


def describe(path):
    pinned = os.path.join(path, ".pinned-commit")
    name = os.path.basename(os.path.normpath(path))
    if os.path.isfile(pinned):
        return f"{name} ({open(pinned).read().strip()[:8]})"
    return name
