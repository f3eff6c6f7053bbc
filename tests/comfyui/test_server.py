"""The real HTTP server: /object_info lists this package's nodes, a graph runs through /prompt and /view."""
import numpy as np

from harness import workflows as wf


def test_object_info_lists_deepytorch_nodes(server):
    info = server.object_info()
    node = info["DeepyTorchApplyDiffusionModel"]
    assert node["display_name"] == "Apply DeepyTorch to diffusion model"
    assert node["category"] == "DeepyTorch"
    assert node["python_module"].startswith("custom_nodes.")
    required = node["input"]["required"]
    assert list(required) == ["model", "backend", "mode", "dynamic", "scope", "fullgraph", "attention"]
    assert all(spec[1].get("tooltip") for spec in required.values())


def test_flux_graph_through_http(comfy, server):
    entry = server.run(wf.flux_t2i(prefix="http_flux"))
    img = server.image(entry, "11")
    assert img.shape == (64, 64, 3) and img.std() > 5
    same = comfy.image(comfy.run(wf.flux_t2i(prefix="inproc_flux")), "11")
    assert np.abs(img - same).max() <= 1     # the server and the in-process executor agree


def test_repeated_accelerated_decodes_in_one_server_compile_nothing(comfy, server):
    """As a user runs it: one server, a FLUX graph whose VAE Decode is accelerated, queued again with new seeds (new
    latents of the same size): the repeats recompile nothing (status route and log), on every ComfyUI version, and
    decode as eager ComfyUI does."""
    import requests

    def prompt(seed, accel=True):
        p = wf.flux_t2i(prefix=f"srv_vae{seed}{accel}", seed=seed)
        if accel:
            p["12"] = {"class_type": wf.VAE_NODE, "inputs": {"vae": ["3", 0], **wf.vae_inputs()}}
            p["10"]["inputs"]["vae"] = ["12", 0]
        return p

    def vae_models():
        models = requests.get(server.url + "/deepytorch/status", timeout=30).json()["models"]
        return [m for m in models if m["label"].startswith("VAE")]

    server.run(prompt(0))
    (first,) = vae_models()[-1:]
    assert first["compiled"] == 1 and first["compiled_calls"] >= 1 and first["failed"] is None
    log_at = len(server.log())
    images = {seed: server.image(server.run(prompt(seed)), "11") for seed in (1, 2, 3)}
    (after,) = vae_models()[-1:]
    assert after["label"] == first["label"] and after["compiled_calls"] >= first["compiled_calls"] + 3
    assert after["recompiles"] == first["recompiles"], after
    new_log = server.log()[log_at:]
    assert "recompiled" not in new_log and "compiling" not in new_log, new_log[-3000:]
    for seed, img in images.items():   # (an eager graph after them: ComfyUI's cache drops the accelerated VAE)
        assert np.abs(img - server.image(server.run(prompt(seed, accel=False)), "11")).max() <= 1
