"""The "Apply DeepyTorch to vae model" node on the FLUX VAE and the SDXL checkpoint's VAE, through ComfyUI's real
nodes."""
import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from harness import workflows as wf

TOL = 1   # 1/255


@pytest.fixture(scope="module")
def latents(comfy):
    """Fixed latents in the input dir: FLUX (16 ch) and SDXL (4 ch), two sizes, batch 1 and 2."""
    g = torch.Generator().manual_seed(0)
    names = {}
    for kind, ch in (("flux", 16), ("sdxl", 4)):
        for shape in ((1, ch, 8, 8), (2, ch, 8, 8), (1, ch, 8, 12), (1, ch, 32, 32)):
            for variant in range(3):
                name = f"{kind}_{'x'.join(map(str, shape))}_{variant}"
                names[(kind, shape, variant)] = wf.save_latent(comfy.input_dir, name, torch.randn(*shape, generator=g))
    return names


def regional(comfy):
    return comfy.package.engine.regional


@pytest.mark.parametrize("kind", ["flux", "sdxl"])
def test_decode_matches_eager_batches_and_two_resolutions(comfy, run, latents, kind):
    ch = 16 if kind == "flux" else 4
    for shape in ((1, ch, 8, 8), (2, ch, 8, 8), (1, ch, 8, 12)):
        latent = latents[(kind, shape, 0)]
        eager = comfy.image(run(wf.vae_decode(kind, latent, prefix="ve")), "5")
        out = run(wf.vae_decode(kind, latent, accel=wf.vae_inputs(), prefix="vc"), fresh=False)
        assert np.abs(comfy.image(out, "5") - eager).max() <= TOL, shape
        assert len(out["outputs"]["5"]["images"]) == shape[0]
    acc = regional(comfy).latest()
    assert acc.label.startswith("VAE") and acc.failed is None and acc.compiled_calls > 0
    assert acc.recompiles <= 2     # per size family: at most one (8x8 -> 8x12 makes it dynamic)


def encoded(comfy, run, prefix, accel, size=(64, 64), tiled=None):
    width, height = size
    img = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(comfy.input_dir, f"enc{width}x{height}.png"))
    torch.manual_seed(0)   # ComfyUI <= v0.3.6 samples the posterior from the global RNG
    run(wf.vae_encode("flux", f"enc{width}x{height}.png", accel=accel, prefix=prefix, tiled=tiled))
    path = sorted(glob.glob(os.path.join(comfy.output_dir, f"{prefix}_*.latent")))[-1]
    return load_file(path)["latent_tensor"]


def test_encode_matches_eager(comfy, run):
    eager = encoded(comfy, run, "enc_e", None)
    compiled = encoded(comfy, run, "enc_c", wf.vae_inputs(parts="encoder"))
    acc = regional(comfy).latest()
    assert list(acc.compiled) == ["encoder"] and acc.compiled_calls == 1
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3 * eager.abs().max().item())


def test_tiled_encode_matches_tiled_eager(comfy, run):
    import nodes
    required = nodes.NODE_CLASS_MAPPINGS["VAEEncodeTiled"].INPUT_TYPES()["required"]
    tiled = {k: spec[1]["default"] for k, spec in required.items() if k not in ("pixels", "vae")}
    tiled["tile_size"] = max(required["tile_size"][1]["min"], 128)   # min 320 on Dec-2024 ComfyUI, 64 on current
    if "overlap" in tiled:
        tiled["overlap"] = 32
    size = (tiled["tile_size"] + 64, tiled["tile_size"])        # two tiles side by side
    eager = encoded(comfy, run, "enct_e", None, size, tiled)
    compiled = encoded(comfy, run, "enct_c", wf.vae_inputs(parts="encoder"), size, tiled)
    assert regional(comfy).latest().compiled_calls > 1         # one per tile
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3 * eager.abs().max().item())


def test_accelerated_and_plain_decode_in_one_graph(comfy, run, latents):
    latent = latents[("flux", (1, 16, 8, 8), 1)]
    eager = comfy.image(run(wf.vae_decode("flux", latent, prefix="vp_e")), "5")
    p = wf.vae_decode("flux", latent, accel=wf.vae_inputs(), prefix="vp_c")
    p["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}}
    p["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "vp_plain"}}
    out = run(p)
    acc = regional(comfy).latest()
    assert acc.compiled_calls == 1                       # only the accelerated decode ran compiled code
    assert np.abs(comfy.image(out, "5") - eager).max() <= TOL
    assert np.array_equal(comfy.image(out, "7"), eager)   # the plain VAEDecode ran ComfyUI's own forward


def test_reruns_and_a_second_configuration_do_not_recompile_or_crash(comfy, run, latents):
    shape = (1, 16, 8, 8)
    run(wf.vae_decode("flux", latents[("flux", shape, 0)], accel=wf.vae_inputs(), prefix="vr_w"), fresh=False)
    counters.clear()
    for variant in range(3):   # the same graph, re-executed with new latents (the decode node re-runs)
        latent = latents[("flux", shape, variant)]
        eager = comfy.image(run(wf.vae_decode("flux", latent, prefix=f"vr_e{variant}"), fresh=False), "5")
        out = run(wf.vae_decode("flux", latent, accel=wf.vae_inputs(), prefix=f"vr{variant}"), fresh=False)
        assert np.abs(comfy.image(out, "5") - eager).max() <= TOL
    assert counters["stats"]["unique_graphs"] == 0
    # a second graph with another VAE node configuration, then the first again
    out = run(wf.vae_decode("flux", latents[("flux", shape, 2)], accel=wf.vae_inputs(parts="decoder",
                                                                                      dynamic="true"),
                            prefix="vr_cfg2"), fresh=False)
    assert np.abs(comfy.image(out, "5") - eager).max() <= TOL
    out = run(wf.vae_decode("flux", latents[("flux", shape, 2)], accel=wf.vae_inputs(), prefix="vr_back"),
              fresh=False)
    assert np.abs(comfy.image(out, "5") - eager).max() <= TOL


def tiled_inputs():
    import nodes
    required = nodes.NODE_CLASS_MAPPINGS["VAEDecodeTiled"].INPUT_TYPES()["required"]
    inputs = {k: spec[1]["default"] for k, spec in required.items() if k not in ("samples", "vae")}
    inputs.update(tile_size=128, overlap=32)
    return inputs


def test_tiled_decode_matches_tiled_eager(comfy, run, latents):
    latent = latents[("flux", (1, 16, 32, 32), 0)]
    eager = comfy.image(run(wf.vae_decode("flux", latent, tiled=tiled_inputs(), prefix="vt_e")), "5")
    out = run(wf.vae_decode("flux", latent, accel=wf.vae_inputs(), tiled=tiled_inputs(), prefix="vt_c"))
    assert eager.shape == (256, 256, 3)
    assert regional(comfy).latest().compiled_calls > 1    # one per tile
    assert np.abs(comfy.image(out, "5") - eager).max() <= TOL


def test_failing_backend_decodes_eager_and_logs(comfy, run, latents, deepy_log):
    failing = comfy.sys_testpack.test_backends
    latent = latents[("sdxl", (1, 4, 8, 8), 0)]
    eager = comfy.image(run(wf.vae_decode("sdxl", latent, prefix="vf_e")), "5")
    out = run(wf.vae_decode("sdxl", latent, accel=wf.vae_inputs(failing.FAILING), prefix="vf_c"))
    assert np.array_equal(comfy.image(out, "5"), eager)
    assert f"backend '{failing.FAILING}' failed in region 'decoder'" in deepy_log.text


def test_out_of_memory_in_the_decoder_reaches_vae_decode_s_tiled_retry_and_stays_accelerated(comfy, run, latents,
                                                                                              caplog):
    """An OOM inside a compiled region is ComfyUI's to handle (VAE Decode retries tiled), not a backend failure.
    CPU has no real OOM: the labelled test backend's graph raises torch's OOM error once."""
    backend = comfy.sys_testpack.test_backends
    first, oom, again = (latents[("flux", (1, 16, 32, 32), v)] for v in range(3))   # new latents: nodes re-run
    accel = wf.vae_inputs(backend.OOM_ONCE, parts="decoder")
    run(wf.vae_decode("flux", first, accel=accel, prefix="voom_w"))       # compile, first decode
    acc = regional(comfy).latest()
    assert acc.failed is None and acc.compiled_calls == 1
    backend.arm_oom()
    caplog.set_level("WARNING")
    out = run(wf.vae_decode("flux", oom, accel=accel, prefix="voom_c"), fresh=False)
    assert "Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding" in caplog.text
    assert regional(comfy).latest() is acc and acc.failed is None
    assert "failed in region" not in caplog.text
    tiles = acc.compiled_calls - 1
    assert tiles >= 1                                  # the tiled retry ran the compiled decoder
    assert comfy.image(out, "5").shape == (256, 256, 3)
    image = comfy.image(run(wf.vae_decode("flux", again, accel=accel, prefix="voom_a"), fresh=False), "5")
    assert acc.compiled_calls == 1 + tiles + 1         # accelerated afterwards, one untiled call
    eager = comfy.image(run(wf.vae_decode("flux", again, prefix="voom_e")), "5")
    assert np.abs(image - eager).max() <= TOL
