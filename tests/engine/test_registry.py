"""pyproject.toml as the Comfy Registry reads it: validated with the registry's own tooling (comfy-cli's
`comfy node validate`, the check `comfy node publish` runs, and its config parser), not with a hand-written check.
comfy-cli lives in a venv of its own (`make registry`, REGISTRY_VENV)."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("REGISTRY_VENV", os.path.expanduser("~/.cache/comfyui-deepytorch/registry-venv"))
ICON_PREFIX = "https://raw.githubusercontent.com/comfyui-deepytorch/ComfyUI-DeepyTorch/main/"
PARSE = """
import json
from comfy_cli.registry.config_parser import extract_node_configuration
print(json.dumps(extract_node_configuration("pyproject.toml"), default=lambda o: vars(o)))
"""


def _tool(name):
    path = os.path.join(VENV, "bin", name)
    assert os.path.exists(path), f"comfy-cli is not installed in {VENV}: run `make registry`"
    return path


def test_comfy_node_validate_passes():
    out = subprocess.run([_tool("comfy"), "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "All validation checks passed successfully" in text and "Security warnings" not in text, text


def test_registry_reads_name_licence_icon_and_oldest_comfyui():
    out = subprocess.run([_tool("python"), "-c", PARSE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout.strip().splitlines()[-1])
    project, comfy = cfg["project"], cfg["tool_comfy"]
    assert "comfyui" not in project["name"].lower()           # the registry's advice
    assert project["license"]["file"] == "LICENSE" and os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert project["version"] and project["urls"]["repository"] and project["urls"]["issues"]
    assert project["supported_comfyui_version"] == ">=0.3.6"  # the oldest ComfyUI every `make test` runs
    assert comfy["publisher_id"] and comfy["display_name"] == "ComfyUI-DeepyTorch"
    assert comfy["icon"].startswith(ICON_PREFIX)               # an icon this repository ships
    assert os.path.isfile(os.path.join(ROOT, comfy["icon"][len(ICON_PREFIX):]))
