"""The serverless instance kit through the REAL ComfyUI server (a subprocess per case, its own env): the status route
(503 while the start-up warm-up runs, 200 after), the warm-up through the server's own queue, a failing warm-up
that leaves the server serving, DEEPYTORCH_AUTO accelerating a plain API workflow, bad env values."""
import json
import os
import time

import numpy as np
import pytest
import requests

from devkit import ui_to_api
from harness import workflows as wf
from harness.server import ComfyServer

TOL = 1   # 1/255: float32 CPU, compiled vs eager
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_server(comfy, tmp_path_factory, name, env):
    s = ComfyServer(comfy.comfy_dir, str(tmp_path_factory.mktemp(name)), comfy.models_dir, comfy.custom_nodes_dir,
                    env=env)
    return s.start()


def status(server):
    r = requests.get(server.url + "/deepytorch/status", timeout=30)
    return r.status_code, r.json()


def wait_ready(server, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, data = status(server)
        if code == 200:
            assert data["ready"] is True
            return data
        assert code == 503 and data["ready"] is False and data["warmup"]["state"] == "running"
        time.sleep(0.25)
    raise TimeoutError(f"not ready within {timeout}s:\n{server.log()[-3000:]}")


def models(data, label):
    return [m for m in data["models"] if m["label"] == label]


def test_status_is_503_while_the_warmup_runs_then_200_and_the_first_request_finds_the_model_compiled(
        comfy, tmp_path_factory, eager_flux):
    files = tmp_path_factory.mktemp("warmup_files")
    gate = files / "release"
    warm = wf.flux_t2i(prefix="warm", accel=wf.accel_inputs("inductor"))
    warm["30"] = {"class_type": "TestOnlyLatentGate", "inputs": {"samples": ["7", 0], "path": str(gate)}}
    warm["9"]["inputs"]["latent_image"] = ["30", 0]   # the warm-up waits at the gate until the test releases it
    (files / "warmup.json").write_text(json.dumps(warm))
    s = start_server(comfy, tmp_path_factory, "warm_server", {"DEEPYTORCH_WARMUP": str(files / "warmup.json")})
    try:
        code, data = status(s)
        assert code == 503 and data["ready"] is False
        assert data["warmup"] == {"state": "running", "files": [str(files / "warmup.json")], "seconds": None,
                                  "error": None}
        deadline = time.time() + 60   # it runs through the server's own queue, as a real request does
        while not s.get("/queue").json()["queue_running"] and time.time() < deadline:
            time.sleep(0.1)
        running = s.get("/queue").json()["queue_running"]
        assert len(running) == 1 and running[0][3]["client_id"] == "deepytorch-warmup"
        gate.write_text("")
        data = wait_ready(s)
        assert data["warmup"]["state"] == "done" and data["warmup"]["error"] is None
        assert data["warmup"]["seconds"] > 0
        (flux,) = models(data, "Flux")
        assert flux["backend"] == "inductor" and flux["scope"] == "regional" and flux["failed"] is None
        assert flux["regions"] == flux["compiled"] == 4 and flux["recompiles"] == 0
        counts = flux["start_counts"]   # 'start' follows what the compile found, counted
        assert flux["start"] == ("precompiled" if counts["artifacts_loaded"] and not counts["artifacts_compiled"]
                                 and not counts["dynamo_graphs"] else flux["start"])
        assert flux["start"] in ("precompiled", "cache", "cold")
        if flux["start"] == "cold":
            assert counts["artifacts_compiled"] or counts["inductor_cache_misses"]
        assert data["cache"]["dir"] == os.environ["DEEPYTORCH_CACHE_DIR"] and data["cache"]["writable"] is True
        assert os.listdir(s.output_dir) == []            # the warm-up's image went to the temp folder
        assert s.get("/history").json() == {}            # and the warm-up left no history entry
        assert "DeepyTorch: warm-up finished in" in s.log()

        entry = s.run(wf.flux_t2i(prefix="first", accel=wf.accel_inputs("inductor")))
        (after,) = models(status(s)[1], "Flux")          # the same accelerated model (ComfyUI's cache kept it)
        assert after["compiled_calls"] == flux["compiled_calls"] + 2 * 4 and after["recompiles"] == 0
        assert s.log().count("DeepyTorch: Flux: compiling 4 region(s)") == 1   # nothing compiled for it
        assert np.abs(s.image(entry, "11") - eager_flux).max() <= TOL
    finally:
        gate.write_text("")
        s.stop()


def test_failing_warmup_and_auto_mode_a_plain_workflow_runs_accelerated_and_nodes_do_not_double_apply(
        comfy, tmp_path_factory, eager_flux):
    files = tmp_path_factory.mktemp("bad_warmup")
    bad = wf.flux_t2i(prefix="bad")
    bad["1"]["inputs"]["unet_name"] = "missing-model.safetensors"
    (files / "bad.json").write_text(json.dumps(bad))
    s = start_server(comfy, tmp_path_factory, "auto_server", {
        "DEEPYTORCH_WARMUP": str(files / "bad.json"), "DEEPYTORCH_AUTO": "diffusion,vae,bogus",
        "DEEPYTORCH_WARMUP_TIMEOUT": "soon"})
    try:
        data = wait_ready(s)
        assert data["warmup"]["state"] == "failed" and data["warmup"]["seconds"] is not None
        error = data["warmup"]["error"]
        assert error.startswith(str(files / "bad.json") + ": the server rejected the prompt (HTTP 400): ")
        assert "node 1 (UNETLoader)" in error and "missing-model.safetensors" in error
        assert data["auto"] == ["diffusion", "vae"] and data["models"] == []
        log = s.log()
        assert "DeepyTorch: warm-up failed: " + error in log
        assert "DeepyTorch: DEEPYTORCH_AUTO='diffusion,vae,bogus': ignored unknown value(s) bogus" in log
        assert "DeepyTorch: DEEPYTORCH_WARMUP_TIMEOUT='soon' is not a number of seconds; using 1800" in log

        # the server keeps serving: a plain workflow (no DeepyTorch node) runs accelerated
        plain = s.image(s.run(wf.flux_t2i(prefix="plain")), "11")
        data = status(s)[1]
        (flux,) = models(data, "Flux")
        assert flux["backend"] == "inductor" and flux["compiled"] == flux["regions"] == 4
        assert flux["compiled_calls"] == 2 * 4
        vae = [m for m in data["models"] if m["label"].startswith("VAE ")]
        # decoder + encoder (the node's default parts); text-to-image decodes only
        assert len(vae) == 1 and vae[0]["regions"] == 2 and vae[0]["compiled"] == 1 and vae[0]["compiled_calls"] > 0
        assert np.abs(plain - eager_flux).max() <= TOL

        # a workflow with the node: the node's regions replace the loader's, never both
        with_node = s.image(s.run(wf.flux_t2i(prefix="node", accel=wf.accel_inputs("inductor"))), "11")
        auto_flux, node_flux = models(status(s)[1], "Flux")
        assert auto_flux["compiled_calls"] == 2 * 4             # the loader's regions did not run again
        assert node_flux["compiled"] == 4 and node_flux["compiled_calls"] == 2 * 4
        assert np.abs(with_node - eager_flux).max() <= TOL
    finally:
        s.stop()


def test_warmup_files_load_api_and_ui_formats_and_bad_files_say_why(comfy, tmp_path):
    warmup = comfy.package.instance.warmup
    api = wf.flux_t2i(prefix="x")
    (tmp_path / "api.json").write_text(json.dumps(api))
    loaded = warmup.load(str(tmp_path / "api.json"))
    assert loaded["11"] == {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}, "_meta": {}}
    assert {k: v for k, v in loaded.items() if k != "11"} == {k: v for k, v in api.items() if k != "11"}
    (tmp_path / "body.json").write_text(json.dumps({"prompt": api, "client_id": "x"}))   # a POST /prompt body
    assert warmup.load(str(tmp_path / "body.json")) == loaded

    ui = ui_to_api.load(os.path.join(ROOT, "example_workflows", "flux_deepytorch.json"))
    info = ui_to_api.object_info_inprocess(comfy.nodes.NODE_CLASS_MAPPINGS, ui_to_api.node_types(ui))
    (tmp_path / "ui.json").write_text(json.dumps(ui))
    converted = warmup.load(str(tmp_path / "ui.json"), lambda: info)
    expected = warmup.without_saved_images(ui_to_api.convert(ui, info))
    assert converted == expected and "SaveImage" not in {n["class_type"] for n in converted.values()}

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = {str(tmp_path / "nope.json"): "no such file",
             str(tmp_path / "bad.json"): "not a JSON workflow (JSONDecodeError: ",
             str(tmp_path / "list.json"): "not an API-format workflow",
             str(tmp_path / "ui.json"): "a UI-format workflow needs the server's node definitions"}
    for path, reason in cases.items():
        with pytest.raises(warmup.WarmupError) as e:
            warmup.load(path)
        assert str(e.value).startswith(f"{path}: {reason}")
