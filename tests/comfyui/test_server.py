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
