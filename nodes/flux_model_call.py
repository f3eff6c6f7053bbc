"""ComfyUI glue: call a loaded ComfyUI FLUX diffusion model on packed tokens, as XLabs' model_forward does.

Two ways, chosen by feature detection (never by ComfyUI version):
- ComfyUI's own `forward_orig` when every block accepts what this ComfyUI's forward_orig passes to blocks (the
  parameters of the stock DoubleStreamBlock / SingleStreamBlock forward: `attn_mask`, `transformer_options` on
  ComfyUI >= v0.3.8, nothing extra before). `transformer_options` is passed only where forward_orig takes it.
- otherwise (XLabs' LoRA / IP-adapter blocks, which lack `attn_mask` and carry a `processor`, or an XLabs ControlNet
  condition) the same computation with the blocks called one by one, each given only the keywords its forward
  accepts. IP-adapter processors get the positive / negative image embeddings as XLabs' model_forward sets them.

Blocks are called normally, so forwards installed as ModelPatcher object patches (DeepyTorch's compiled regions,
XLabs' processors) run; "dit" block-replace patches (DeepyTorch's step cache) are applied on both paths.
"""
import contextlib
import inspect

import torch

import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.flux.model as flux_model

OPTIONAL_BLOCK_ARGS = ("attn_mask", "transformer_options")
_ANY = object()


def is_flux(diffusion_model):
    return isinstance(diffusion_model, flux_model.Flux)


def _parameters(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def _generic(params):
    return params is not None and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())


def accepted(block):
    """The keyword names `block(...)` accepts, or _ANY. A generic (*args, **kwargs) forward installed on the block
    (e.g. a compiled region) runs the class's forward, so that one decides."""
    params = _parameters(inspect.unwrap(block.forward))
    if params is None or _generic(params):
        params = _parameters(type(block).forward)
    if params is None:
        return set()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return _ANY
    return set(params)


def _accepts(block, names):
    got = accepted(block)
    return got is _ANY or set(names) <= got


def stock_block_args(kind):
    """The optional keywords this ComfyUI's stock block takes (what its forward_orig passes to blocks)."""
    cls = flux_layers.DoubleStreamBlock if kind == "double" else flux_layers.SingleStreamBlock
    params = _parameters(cls.forward) or {}
    return tuple(n for n in OPTIONAL_BLOCK_ARGS if n in params)


def ip_adapters(diffusion_model):
    """XLabs' IP-adapter processors (x-flux-comfyui's IPProcessor) installed on the double blocks, in block order."""
    for block in diffusion_model.double_blocks:
        yield from getattr(getattr(block, "processor", None), "ip_adapters", None) or ()


@contextlib.contextmanager
def ip_scales_as_tensors(diffusion_model):
    """XLabs' IP-adapter processors keep their strength as a Python float (`ip_scale`, a new set of processors every
    time "Apply Flux IPAdapter" runs), and a compiled block specialises on a float attribute: each new strength would
    compile the block again. For the sampling call of a compiled model each strength is a 0-d float32 tensor (a graph
    input, not a constant), put back afterwards. Yields how many there are."""
    saved = []
    for ip in ip_adapters(diffusion_model):
        scale = getattr(ip, "ip_scale", None)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            device = next((p.device for p in ip.parameters()), None)
            saved.append((ip, scale))
            ip.ip_scale = torch.tensor(float(scale), dtype=torch.float32, device=device)
    try:
        yield len(saved)
    finally:
        for ip, scale in saved:
            ip.ip_scale = scale


class FluxCall:
    """`call(img, img_ids, txt, txt_ids, timesteps, y, guidance, negative=False, controls=None)` -> prediction
    (b, tokens, 64), for one loaded FLUX diffusion model."""

    def __init__(self, diffusion_model, transformer_options=None):
        self.dm = diffusion_model
        self.transformer_options = dict(transformer_options or {})
        double, single = list(diffusion_model.double_blocks), list(diffusion_model.single_blocks)
        self.xlabs_blocks = any(hasattr(b, "processor") for b in double)
        self.forward_orig_ok = (not self.xlabs_blocks
                                and all(_accepts(b, stock_block_args("double")) for b in double)
                                and all(_accepts(b, stock_block_args("single")) for b in single))
        self._orig_params = _parameters(diffusion_model.forward_orig) or {}
        self._double_kw = [self._block_kwargs(b) for b in double]
        self._single_kw = [self._block_kwargs(b) for b in single]

    @property
    def path(self):
        return "forward_orig" if self.forward_orig_ok else "blocks"

    def _block_kwargs(self, block):
        got = accepted(block)
        return tuple(n for n in OPTIONAL_BLOCK_ARGS if got is _ANY or n in got)

    def __call__(self, img, img_ids, txt, txt_ids, timesteps, y, guidance, negative=False, controls=None):
        if self.forward_orig_ok and controls is None:
            kw = {}
            if "transformer_options" in self._orig_params:
                kw["transformer_options"] = self.transformer_options
            return self.dm.forward_orig(img, img_ids, txt, txt_ids, timesteps, y, guidance, None, **kw)
        return self.blocks(img, img_ids, txt, txt_ids, timesteps, y, guidance, negative, controls)

    def blocks(self, img, img_ids, txt, txt_ids, timesteps, y, guidance, negative=False, controls=None):
        """forward_orig's computation (and XLabs' model_forward's) with each block given only what it accepts."""
        dm = self.dm
        extra = {"attn_mask": None, "transformer_options": self.transformer_options}
        img = dm.img_in(img)
        vec = dm.time_in(flux_layers.timestep_embedding(timesteps, 256).to(img.dtype))
        if dm.params.guidance_embed and guidance is not None:
            vec = vec + dm.guidance_in(flux_layers.timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + dm.vector_in(y[:, :dm.params.vec_in_dim])
        txt = dm.txt_in(txt)
        pe = dm.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        replace = (self.transformer_options.get("patches_replace") or {}).get("dit") or {}
        for i, block in enumerate(dm.double_blocks):
            for ip in getattr(getattr(block, "processor", None), "ip_adapters", None) or ():
                ip.ip_hidden_states = ip.in_hidden_states_neg if negative else ip.in_hidden_states_pos
            kw = {k: extra[k] for k in self._double_kw[i]}
            patch = replace.get(("double_block", i))
            if patch is None:
                img, txt = block(img=img, txt=txt, vec=vec, pe=pe, **kw)
            else:   # as forward_orig does: e.g. DeepyTorch's step cache
                def original(args, block=block, kw=kw):
                    out = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"], **kw)
                    return {"img": out[0], "txt": out[1]}
                out = patch({"img": img, "txt": txt, "vec": vec, "pe": pe, **extra}, {"original_block": original})
                img, txt = out["img"], out["txt"]
            if controls is not None:
                img = img + controls[i % 2]    # XLabs ControlNet: 2 residuals, alternating over the double blocks
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(dm.single_blocks):
            kw = {k: extra[k] for k in self._single_kw[i]}
            patch = replace.get(("single_block", i))
            if patch is None:
                img = block(img, vec=vec, pe=pe, **kw)
            else:
                def original(args, block=block, kw=kw):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], **kw)}
                img = patch({"img": img, "vec": vec, "pe": pe, **extra}, {"original_block": original})["img"]
        img = img[:, txt.shape[1]:, ...]
        return dm.final_layer(img, vec)
