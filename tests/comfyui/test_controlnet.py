"""Apply DeepyTorch to controlnet, through ComfyUI's real ControlNetLoader, ControlNetApplyAdvanced, KSampler and
VAEDecode (nodes called directly): tiny real-format ControlNets, an SDXL one (original `control_model.` layout) on
the tiny SDXL checkpoint and an XLabs-format FLUX one (the guide's flux-canny-controlnet-v3) on the tiny FLUX-dev. Images are
compared with eager ComfyUI's for the same settings; "compiled nothing" counts dynamo frames and precompiled
artifacts baked or loaded."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from devkit.tiny_models import NAMES
from harness.counting import compiled_since

TOL = 1   # 1/255: float32 compute on CPU, compiled vs eager


KINDS = {"sdxl": NAMES["sdxl_controlnet"], "flux": NAMES["flux_controlnet"]}


@pytest.fixture(scope="module", params=list(KINDS))
def setup(comfy, request):
    """(kind, model, vae, positive, negative, control image, KSampler settings) for the tiny SDXL checkpoint or the
    tiny FLUX-dev files."""
    import nodes
    with torch.inference_mode():   # loaded as ComfyUI's executor loads them: their weights are inference tensors
        return request.param, *models(nodes, request.param)


def models(nodes, kind):
    if kind == "sdxl":
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(NAMES["sdxl"])[:3]
        sampling = dict(channels=4, cfg=5.0, scheduler="normal")
    else:
        model = nodes.UNETLoader().load_unet(NAMES["flux_unet"], "default")[0]
        clip = nodes.DualCLIPLoader().load_clip(NAMES["clip_l"], NAMES["t5"], "flux")[0]
        vae = nodes.VAELoader().load_vae(NAMES["flux_vae"])[0]
        sampling = dict(channels=16, cfg=1.0, scheduler="simple")
    pos = nodes.CLIPTextEncode().encode(clip, "a tiny red fox")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))   # an IMAGE: a control picture
    return model, vae, pos, neg, hint, sampling


def image(setup, control_net=None, strength=1.0, start=0.0, end=1.0, hint=None):
    """KSampler (2 steps) + VAEDecode with the ControlNet applied by ComfyUI's ControlNetApplyAdvanced."""
    import nodes
    _, model, vae, pos, neg, default_hint, sampling = setup
    hint = default_hint if hint is None else hint
    if control_net is not None:
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_net, hint, strength, start,
                                                                    end)[:2]
    latent = {"samples": torch.zeros(1, sampling["channels"], 8, 8)}
    with torch.inference_mode():   # as ComfyUI's executor runs nodes
        samples = nodes.KSampler().sample(model, 0, 2, sampling["cfg"], "euler", sampling["scheduler"], pos, neg,
                                          latent)[0]
        pixels = nodes.VAEDecode().decode(vae, samples)[0][0]
    return np.clip(255.0 * pixels.numpy(), 0, 255).astype(int)


def test_accelerated_controlnet_matches_eager_and_leaves_the_loaders_controlnet_eager(comfy, setup, deepy_log):
    """The node's ControlNet: its control model's blocks compiled (every region, every call counted), the image
    within 1/255 of eager ComfyUI's; its hint network runs once per control image (across steps and runs); strength
    and start / end changes compile nothing; the loader's ControlNet, used afterwards, gives its first image bit for
    bit and runs no compiled code."""
    import nodes
    engine = comfy.package.engine
    with torch.inference_mode():   # as the executor runs the loader (the blocks' compiled code guards on it)
        loaded = nodes.ControlNetLoader().load_controlnet(KINDS[setup[0]])[0]
    plain = image(setup)
    settings = [(1.0, 0.0, 1.0), (0.5, 0.0, 1.0), (1.0, 0.0, 0.5)]
    eager = {s: image(setup, loaded, *s) for s in settings}
    assert np.abs(eager[settings[0]] - plain).max() > 10                   # the ControlNet matters
    assert np.abs(eager[settings[0]] - eager[settings[1]]).max() > 5       # and so does its strength
    node = comfy.package.nodes.controlnet.ApplyDeepyTorchControlNet()
    accelerated = node.apply(loaded, "inductor", "default", "auto")[0]
    assert accelerated is not loaded and accelerated.control_model is loaded.control_model   # a copy, same weights
    assert accelerated.control_model_wrapped is not loaded.control_model_wrapped
    img = image(setup, accelerated, *settings[0])
    label = f"ControlNet {type(loaded.control_model).__name__}"
    acc = engine.regional.latest(label)
    regions = len(engine.regional.find_regions(loaded.control_model))
    assert regions >= 2 and acc.failed is None and len(acc.compiled) == regions
    calls = acc.compiled_calls
    assert calls >= 2 * regions and calls % regions == 0                  # every region compiled on every call
    assert np.abs(img - eager[settings[0]]).max() <= TOL
    hints = accelerated.control_model_wrapped.object_patches["input_hint_block.forward"]
    assert hints.computed == 1 and hints.reused == calls // regions - 1   # the hint network ran once in the run
    for s in settings[1:]:
        counters.clear()
        before = dict(engine.precompiled.STATS)
        img = image(setup, accelerated, *s)
        assert np.abs(img - eager[s]).max() <= TOL, s
        assert compiled_since(engine, before) == 0, f"{s}: a strength / window change must not compile"
    assert acc.recompiles == 0
    assert hints.computed == 1, "runs with the same control image must reuse its hint features"
    other = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    img = image(setup, accelerated, hint=other)
    assert hints.computed == 2                                              # a new control image: computed again
    assert np.abs(img - image(setup, loaded, hint=other)).max() <= TOL
    # the loader's ControlNet afterwards: stock ComfyUI, bit for bit, no compiled call, nothing compiled
    counters.clear()
    before, calls = dict(engine.precompiled.STATS), acc.compiled_calls
    assert np.abs(image(setup, loaded, *settings[0]) - eager[settings[0]]).max() == 0
    assert acc.compiled_calls == calls and compiled_since(engine, before) == 0
    assert f"DeepyTorch: {label}: compiling" in deepy_log.text


def test_a_controlnet_without_a_control_model_passes_through_with_a_log_line(comfy, deepy_log):
    """A CONTROL_NET of a kind DeepyTorch does not accelerate (ComfyUI's T2IAdapter: its adapter module is no
    control model ComfyUI loads as a model) comes back unchanged, named in the log."""
    from comfy.controlnet import T2IAdapter
    adapter = T2IAdapter(torch.nn.Identity(), 3, 8, "nearest-exact")
    node = comfy.package.nodes.controlnet.ApplyDeepyTorchControlNet()
    assert node.apply(adapter, "inductor", "default", "auto")[0] is adapter
    assert ("DeepyTorch: Apply DeepyTorch to controlnet: T2IAdapter passes through unchanged: it has no control "
            "model ComfyUI loads as a model") in deepy_log.text
