"""The workflows shipped in example_workflows/ are what a user loads from Workflow -> Browse Templates, so they
are UI-format graphs; each is converted to an API prompt with the live node definitions of the running ComfyUI
(devkit.ui_to_api, no hand-kept API copies) and run through the real HTTP server on the tiny models, with only the
size and the steps made small, once as shipped and once with the DeepyTorch nodes bypassed (mode 4)."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from devkit import ui_to_api as u
from devkit.comfy_boot import PACKAGE_DIR_NAME
from devkit.locate import REPO_ROOT
from devkit.tiny_models import NAMES
from harness import xflux

EXAMPLES = os.path.join(REPO_ROOT, "example_workflows")
ACCEL = {"DeepyTorchApplyDiffusionModel", "DeepyTorchApplyVAE", "DeepyTorchApplyControlNet"}
SMALL = dict(width=64, height=64, steps=2)
SAVE = "11"   # the SaveImage node of every shipped workflow
# name: (needs x-flux-comfyui, the sampler's model input through the chain, loader -> sampler, as node types)
WORKFLOWS = {
    "flux_deepytorch": (False, ["UNETLoader", "DeepyTorchApplyDiffusionModel", "KSampler"]),
    "flux_lora_deepytorch": (True, ["UNETLoader", "FluxLoraLoader", "DeepyTorchApplyDiffusionModel",
                                    "DeepTorchXlabsSampler"]),
    "flux_comfy_lora_deepytorch": (False, ["UNETLoader", "LoraLoaderModelOnly", "DeepyTorchApplyDiffusionModel",
                                           "KSampler"]),
    "sdxl_deepytorch": (False, ["CheckpointLoaderSimple", "DeepyTorchApplyDiffusionModel", "KSampler"]),
    "flux_xlabs_sampler_swap": (True, ["UNETLoader", "FluxLoraLoader", "DeepyTorchApplyDiffusionModel",
                                       "DeepTorchXlabsSampler"]),
    "flux_controlnet_deepytorch": (True, ["UNETLoader", "FluxLoraLoader", "DeepyTorchApplyDiffusionModel",
                                          "DeepTorchXlabsSampler"]),
    "sdxl_controlnet_deepytorch": (False, ["CheckpointLoaderSimple", "DeepyTorchApplyDiffusionModel", "KSampler"]),
}
# the ControlNet workflows (a canny ControlNet on ComfyUI's example.png): the log line of its compiled blocks
CONTROLNETS = {"flux_controlnet_deepytorch": r"XLabs ControlNet ControlNetFlux: (all 2 region\(s\) (compiled|ready)|"
                                             r"2 region\(s\) started from)",
               "sdxl_controlnet_deepytorch": r"ControlNet ControlNet: (all \d+ region\(s\) (compiled|ready)|"
                                             r"\d+ region\(s\) started from)"}
MODEL_FILES = {
    "UNETLoader": [NAMES["flux_unet"], "default"],
    "DualCLIPLoader": [NAMES["clip_l"], NAMES["t5"], "flux"],
    "VAELoader": [NAMES["flux_vae"]],
    "CheckpointLoaderSimple": [NAMES["sdxl"]],
    "LoraLoaderModelOnly": [NAMES["flux_lora"]],
    "FluxLoraLoader": [NAMES["xlabs_lora"]],
    "LoadFluxControlNet": ["flux-dev", NAMES["flux_controlnet"]],
    "ControlNetLoader": [NAMES["sdxl_controlnet"]],
    "LoadImage": ["example.png"],          # ComfyUI ships it in input/
}


def workflow(name):
    return u.load(os.path.join(EXAMPLES, name + ".json"))


def nodes_of(ui, kind):
    return [n for n in ui["nodes"] if n["type"] == kind]


@pytest.fixture(scope="module")
def xflux_server(comfy, tmp_path_factory):
    if not xflux.available():
        pytest.skip(xflux.MISSING + ": workflows with XLabs' Load Flux LoRA not run")
    s = xflux.start_server(comfy, str(tmp_path_factory.mktemp("xflux_workflows")))
    try:
        problem = xflux.load_problem(s)
        if problem:
            pytest.skip(problem)
        yield s
    finally:
        s.stop()


@pytest.fixture
def server_for(request, comfy):
    def get(name):
        s = request.getfixturevalue("xflux_server" if WORKFLOWS[name][0] else "server")
        # the ControlNet workflows' Load Image reads ComfyUI's own example.png (each server has an input dir of its own)
        shutil.copy(os.path.join(comfy.comfy_dir, "input", "example.png"), os.path.join(s.base_dir, "input"))
        return s
    return get


# -- the files themselves (no ComfyUI needed) ------------------------------------------------------------------
def test_exactly_the_seven_workflows_ship():
    # each with the thumbnail Browse Templates shows (<name>.jpg beside it)
    assert set(os.listdir(EXAMPLES)) == {n + ext for n in WORKFLOWS for ext in (".json", ".jpg")}


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_format_with_seed_settings_and_a_note(name):
    ui = workflow(name)
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    # every link is recorded at both ends
    for lid, origin, oslot, target, tslot, kind in ui["links"]:
        src, dst = next(n for n in ui["nodes"] if n["id"] == origin), next(n for n in ui["nodes"] if n["id"] == target)
        assert lid in src["outputs"][oslot]["links"] and dst["inputs"][tslot]["link"] == lid
        assert src["outputs"][oslot]["type"] == dst["inputs"][tslot]["type"] == kind
    notes = nodes_of(ui, "Note")
    assert len(notes) == 1 and notes[0]["widgets_values"][0].startswith("DeepyTorch: ")
    text = notes[0]["widgets_values"][0]
    assert "Ctrl+B" in text and ("x-flux-comfyui" in text) == WORKFLOWS[name][0]
    for kind, values in MODEL_FILES.items():
        for n in nodes_of(ui, kind):
            assert n["widgets_values"][:len(values)] == values, (kind, n["widgets_values"])
    latents = nodes_of(ui, "EmptySD3LatentImage") + nodes_of(ui, "EmptyLatentImage")
    assert [n["widgets_values"] for n in latents] == [[768, 1024, 1]]
    samplers = nodes_of(ui, "KSampler") + nodes_of(ui, "DeepTorchXlabsSampler")
    assert len(samplers) == 1
    steps = samplers[0]["widgets_values"][2]          # after seed and its "control after generate"
    assert steps == (6 if name.startswith("sdxl") else 20)    # Lightning: 6 steps
    assert {n["type"] for n in ui["nodes"]} >= {"DeepyTorchApplyDiffusionModel", "SaveImage", "VAEDecode"}
    assert [n["id"] for n in nodes_of(ui, "SaveImage")] == [int(SAVE)]


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_layout_is_tidy(name):
    """Nodes (title bar included) do not overlap, and no link runs backwards (right to left)."""
    ui = workflow(name)
    title = 30
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]}
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"
    for _, origin, _, target, _, _ in ui["links"]:
        assert boxes[origin][0] <= boxes[target][0], f"link {origin} -> {target} runs right to left"


# -- through the real server ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_every_node_type_exists(name, server_for):
    info = server_for(name).object_info()
    assert [t for t in u.node_types(workflow(name)) if t not in info] == []


def test_conversion_follows_the_frontend(server):
    """Widget values land on the right inputs (seed's 'control after generate' skipped), links become inputs,
    the Note is dropped, bypass routes around a node, mute drops it and what it fed."""
    info = server.object_info()
    ui = workflow("flux_deepytorch")
    api = u.convert(ui, info)
    assert "100" not in api and {n["class_type"] for n in api.values()} == set(u.node_types(ui))
    assert api["9"]["inputs"] == {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                  "denoise": 1.0, "model": ["21", 0], "positive": ["5", 0], "negative": ["6", 0],
                                  "latent_image": ["7", 0]}
    assert api["21"]["inputs"] == {"backend": "auto", "mode": "default", "dynamic": "auto", "scope": "regional",
                                   "fullgraph": False, "attention": "auto", "model": ["1", 0]}
    assert api["22"]["inputs"] == {"backend": "auto", "mode": "default", "dynamic": "auto", "parts": "decoder",
                                   "vae": ["3", 0]}
    bypassed = u.convert(u.with_modes(ui, u.BYPASSED, ACCEL), info)
    assert set(api) - set(bypassed) == {"21", "22"}
    assert bypassed["9"]["inputs"]["model"] == ["1", 0] and bypassed["10"]["inputs"]["vae"] == ["3", 0]
    muted = u.convert(u.with_modes(ui, u.MUTED, {"DeepyTorchApplyDiffusionModel"}), info)
    assert "21" not in muted and "model" not in muted["9"]["inputs"]
    broken = json.loads(json.dumps(ui))
    next(n for n in broken["nodes"] if n["id"] == 9)["widgets_values"].append(1.0)
    with pytest.raises(ValueError, match="8 widget values, this ComfyUI's definition takes 7"):
        u.convert(broken, info)


def model_chain(api, sampler_id):
    chain, node = [], sampler_id
    while node is not None:
        chain.append(api[node]["class_type"])
        link = api[node]["inputs"].get("model")
        node = link[0] if isinstance(link, list) else None
    return chain[::-1]


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_runs_and_matches_with_deepytorch_bypassed(name, server_for):
    """As shipped (DeepyTorch compiles: inductor on CPU) and with the DeepyTorch nodes bypassed (plain ComfyUI): both
    produce an image fetched through /view, and the images agree within 1/255."""
    s = server_for(name)
    info = s.object_info()
    ui = workflow(name)
    images = {}
    # bypassed first: ComfyUI then drops any cached result of the shipped graph (an earlier identical prompt), so
    # the shipped graph below really runs and compiles
    for label, graph in (("bypassed", u.with_modes(ui, u.BYPASSED, ACCEL)), ("deepytorch", ui)):
        api = u.convert(graph, info)
        sampler = next(k for k, v in api.items() if v["class_type"] in ("KSampler", "DeepTorchXlabsSampler"))
        expected = WORKFLOWS[name][1] if label == "deepytorch" else [
            t for t in WORKFLOWS[name][1] if t not in ACCEL]
        assert model_chain(api, sampler) == expected
        assert u.override(api, **SMALL) == 3
        log_start = len(s.log())
        entry = s.run(api)
        images[label] = s.image(entry, SAVE)
        log = s.log()[log_start:]
        if label == "deepytorch":
            # the diffusion model ran compiled: its regions were compiled by inductor during this prompt
            # (or, where an earlier run left them in the compile cache, started from its precompiled artifacts)
            assert re.search(r"DeepyTorch: \w+: (all \d+ region\(s\) (compiled|ready)|\d+ region\(s\) started from "
                             r"\d+ precompiled artifact)", log), log[-3000:]
            if name in CONTROLNETS:   # and so did the ControlNet's blocks (XLabs': in the sampler)
                assert re.search("DeepyTorch: " + CONTROLNETS[name], log), log[-3000:]
    assert images["deepytorch"].shape == (64, 64, 3) and images["deepytorch"].std() > 5
    assert np.abs(images["deepytorch"] - images["bypassed"]).max() <= 1


def test_workflow_templates_lists_the_seven(server):
    """What the frontend's Browse Templates shows for this pack (custom_nodes/ComfyUI-DeepyTorch)."""
    import requests
    r = requests.get(server.url + "/workflow_templates", timeout=30)
    if r.status_code == 404:
        pytest.skip("this ComfyUI has no GET /workflow_templates (custom-node templates arrived after v0.3.7)")
    r.raise_for_status()
    assert sorted(r.json()[PACKAGE_DIR_NAME]) == sorted(WORKFLOWS)
    for name in WORKFLOWS:    # and serves each file as shipped
        served = server.get(f"/api/workflow_templates/{PACKAGE_DIR_NAME}/{name}.json").json()
        assert served == workflow(name)
