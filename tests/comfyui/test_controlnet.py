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
    hint = setup[5] if hint is None else hint
    return chained(setup, [] if control_net is None else [(control_net, strength, start, end, hint)])


def chained(setup, controls):
    """KSampler (2 steps) + VAEDecode with each (control_net, strength, start, end, hint[, vae]) applied in turn by
    its own ControlNetApplyAdvanced (a chain: each ControlNet's previous is the one applied before it)."""
    return sampled(setup, controls)[1]


def sampled(setup, controls):
    """chained()'s (latent samples, image)."""
    import nodes
    _, model, vae, pos, neg, _, sampling = setup
    for control_net, strength, start, end, hint, *hint_vae in controls:
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_net, hint, strength, start,
                                                                    end, *hint_vae)[:2]
    latent = {"samples": torch.zeros(1, sampling["channels"], 8, 8)}
    with torch.inference_mode():   # as ComfyUI's executor runs nodes
        samples = nodes.KSampler().sample(model, 0, 2, sampling["cfg"], "euler", sampling["scheduler"], pos, neg,
                                          latent)[0]
        pixels = nodes.VAEDecode().decode(vae, samples)[0][0]
    return samples["samples"], np.clip(255.0 * pixels.numpy(), 0, 255).astype(int)


def load(name):
    import nodes
    with torch.inference_mode():   # as the executor runs the loader (the blocks' compiled code guards on it)
        return nodes.ControlNetLoader().load_controlnet(name)[0]


def test_accelerated_controlnet_matches_eager_and_leaves_the_loaders_controlnet_eager(comfy, setup, deepy_log):
    """The node's ControlNet: its control model's blocks compiled (every region, every call counted), the image
    within 1/255 of eager ComfyUI's; its hint network runs once per control image (across steps and runs); strength
    and start / end changes compile nothing; the loader's ControlNet, used afterwards, gives its first image bit for
    bit and runs no compiled code."""
    engine = comfy.package.engine
    loaded = load(KINDS[setup[0]])
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


def test_a_chain_of_controlnets_keeps_each_ones_acceleration(comfy, setup):
    """Two ControlNets chained by two Apply ControlNet nodes (each with its own strength and control image): the
    first accelerated and the second straight from its loader, then both accelerated. Images within 1/255 of the
    eager chain; every compiled call belongs to the ControlNet whose regions it is: its regions' compiled calls are
    its calls (counted by its hint network) times its regions, and the eager one adds none."""
    engine = comfy.package.engine
    first, second = load(KINDS[setup[0]]), load(KINDS[setup[0]])
    other = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(7))
    settings = [(1.0, 0.0, 1.0, setup[5]), (0.6, 0.0, 0.5, other)]
    eager = chained(setup, [(first, *settings[0]), (second, *settings[1])])
    assert np.abs(eager - image(setup, first)).max() > 5          # the second ControlNet matters
    node = comfy.package.nodes.controlnet.ApplyDeepyTorchControlNet()
    regions = len(engine.regional.find_regions(first.control_model))
    label = f"ControlNet {type(first.control_model).__name__}"

    def accelerated(control_net):
        out = node.apply(control_net, "inductor", "default", "auto")[0]
        return out, engine.regional.latest(label), out.control_model_wrapped.object_patches["input_hint_block.forward"]

    def run(controls, accs):
        """The chain's image and, per AcceleratedModel in `accs`, (its compiled calls, its ControlNet's calls) in
        this run; and the compiled calls of every live AcceleratedModel in this run."""
        calls = lambda: {id(a): a.compiled_calls for a in engine.regional.live()}   # noqa: E731
        before, seen = calls(), [(a.compiled_calls, h.computed + h.reused) for a, h in accs]
        img = chained(setup, controls)
        after = calls()
        total = sum(n - before.get(k, 0) for k, n in after.items())
        return img, [(a.compiled_calls - c, h.computed + h.reused - n) for (a, h), (c, n) in zip(accs, seen)], total

    a, acc_a, hints_a = accelerated(first)
    img, [(compiled, calls)], total = run([(a, *settings[0]), (second, *settings[1])], [(acc_a, hints_a)])
    assert np.abs(img - eager).max() <= TOL
    assert calls >= 2 and compiled == regions * calls and total == compiled   # the loader's second ran eager
    b, acc_b, hints_b = accelerated(second)
    assert acc_b is not acc_a and hints_b is not hints_a
    img, counted, total = run([(a, *settings[0]), (b, *settings[1])], [(acc_a, hints_a), (acc_b, hints_b)])
    assert np.abs(img - eager).max() <= TOL
    assert all(n >= 1 and c == regions * n for c, n in counted), counted
    assert total == sum(c for c, _ in counted) and acc_a.failed is None and acc_b.failed is None


def test_a_control_lora_passes_through_eager_with_the_reason(comfy, deepy_log):
    """Stability's Control-LoRA (ComfyUI builds its control model from the UNet's weights in pre_run, anew for every
    sampling run, and deletes it after): the node returns it unchanged and says why; the image is eager ComfyUI's,
    bit for bit, and nothing is compiled."""
    import nodes
    with torch.inference_mode():
        setup = ("sdxl", *models(nodes, "sdxl"))
    control_lora = load(NAMES["sdxl_control_lora"])
    assert type(control_lora).__name__ == "ControlLora"
    eager = image(setup, control_lora)
    assert np.abs(eager - image(setup)).max() > 5                # the Control-LoRA matters
    engine = comfy.package.engine
    def newest():   # the reference of the newest AcceleratedModel created (each creation appends one)
        return engine.regional._live[-1] if engine.regional._live else None
    last = newest()
    node = comfy.package.nodes.controlnet.ApplyDeepyTorchControlNet()
    assert node.apply(control_lora, "inductor", "default", "auto")[0] is control_lora
    assert ("DeepyTorch: Apply DeepyTorch to controlnet: ControlLora passes through unchanged: ComfyUI builds its "
            "control model anew for every sampling run (pre_run) and deletes it after, so it runs eager as in "
            "ComfyUI") in deepy_log.text
    counters.clear()
    before = dict(engine.precompiled.STATS)
    assert np.abs(image(setup, control_lora) - eager).max() == 0
    assert compiled_since(engine, before) == 0 and newest() is last   # no AcceleratedModel was made


def test_union_controlnet_with_its_type_set_before_or_after_the_node(comfy):
    """InstantX's FLUX Union ControlNet (the control image goes in as VAE latents: Apply ControlNet's `vae` input)
    with SetUnionControlNetType after and before Apply DeepyTorch to controlnet: images within 1/255 of eager's with
    the same type, every region compiled on every call; another type on the accelerated ControlNet compiles
    nothing. Own compile options (dynamic false): the mode token lengthens the text, a shape of the FLUX double
    block no other test's artifacts should count."""
    import nodes
    from comfy_extras.nodes_controlnet import SetUnionControlNetType
    engine = comfy.package.engine
    with torch.inference_mode():
        setup = ("flux", *models(nodes, "flux"))
    union = load(NAMES["flux_union_controlnet"])
    assert union.control_model.num_union_modes == 10

    def typed(control_net, kind):
        return SetUnionControlNetType().set_controlnet_type(control_net, kind)[0]

    def run(control_net):
        return sampled(setup, [(control_net, 1.0, 0.0, 1.0, setup[5], setup[2])])

    def close(a, b):
        """Images within 1/255 and latents within 1e-4 (the union type is one token among the prompt's: its effect
        on the 8-bit image is small, on the latents it is clear)."""
        return np.abs(a[1] - b[1]).max() <= TOL and (a[0] - b[0]).abs().max() <= 1e-4

    canny, depth = "canny/lineart/anime_lineart/mlsd", "depth"
    eager = {kind: run(typed(union, kind)) for kind in (canny, depth)}
    untyped = run(union)
    assert np.abs(eager[canny][1] - image(setup)).max() > 5                   # the ControlNet matters
    assert (eager[canny][0] - eager[depth][0]).abs().max() > 1e-2            # and so does its type
    assert (eager[canny][0] - untyped[0]).abs().max() > 1e-2
    node = comfy.package.nodes.controlnet.ApplyDeepyTorchControlNet()
    regions = len(engine.regional.find_regions(union.control_model))
    label = f"ControlNet {type(union.control_model).__name__}"
    accelerated = node.apply(union, "inductor", "default", "false")[0]
    acc = engine.regional.latest(label)
    assert close(run(typed(accelerated, canny)), eager[canny])               # the type set after the node
    assert regions >= 2 and acc.failed is None and len(acc.compiled) == regions
    assert acc.compiled_calls >= 2 * regions and acc.compiled_calls % regions == 0
    counters.clear()
    before, calls = dict(engine.precompiled.STATS), acc.compiled_calls
    assert close(run(typed(accelerated, depth)), eager[depth])
    assert compiled_since(engine, before) == 0 and acc.recompiles == 0, "another union type must not compile"
    assert acc.compiled_calls - calls == calls                              # as many compiled calls as the first run
    first = node.apply(typed(union, depth), "inductor", "default", "false")[0]   # the type set before the node
    acc_first = engine.regional.latest(label)
    assert acc_first is not acc and close(run(first), eager[depth])
    assert acc_first.compiled_calls == calls and acc_first.failed is None
    assert union.extra_args == {}                                           # the loader's ControlNet: untyped
