"""Development shim that lets REAL ComfyUI load *tiny* models (the tests, the demo; never imported by the node pack;
see README.md, "How it is tested").

ComfyUI hard-codes the widths of FLUX (hidden 3072 / 24 heads / T5 context 4096), of T5-XXL
(t5_config_xxl.json: 24 x 4096), of CLIP-L (sd1_clip_config.json: 12 x 768), of CLIP vision (clip_vision_config_*.json,
picked by layer count: ViT-L 24 x 1024) and of the SD/FLUX VAE
(ch=128, ch_mult=[1,2,4,4]), and it matches SD UNets to a model family by exact widths (SDXL: 320 channels,
context 2048, ADM 2816).  Key *names* are what ComfyUI's detection looks at; the widths are fixed.  This shim keeps
every code path of ComfyUI (detection, loaders, ModelPatcher, samplers, LoRA patching, VAE tiling ...) and only swaps the hard-coded width numbers for the ones read from
the tensors' shapes when a file is smaller than the real model (the diffusion-model part is devkit.widths, which the
benchmark uses too).  Real-size files are untouched.

install() must be called after `comfy.sd` is importable (i.e. after cli args are set) and before
any model is loaded.
"""
import contextvars
import functools
import json
import os

from . import widths

_TE_SDS = contextvars.ContextVar("tiny_te_state_dicts", default=None)
_CKPT_TE = contextvars.ContextVar("tiny_checkpoint_te_dims", default=None)   # {"sd1_clip_config.json": dims, ...}
_installed = {}


def _count(keys, fmt):
    n = 0
    while any(k.startswith(fmt.format(n)) for k in keys):
        n += 1
    return n


def clip_dims(sd, prefix=""):
    p = f"{prefix}text_model."
    hidden = sd[f"{p}embeddings.token_embedding.weight"].shape[1]
    d = {
        "hidden_size": hidden,
        "num_hidden_layers": _count(sd.keys(), p + "encoder.layers.{}."),
        "intermediate_size": sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_attention_heads": max(1, hidden // 16),   # convention: head_dim 16 (no shape tells it)
        "vocab_size": sd[f"{p}embeddings.token_embedding.weight"].shape[0],
    }
    if f"{prefix}text_projection.weight" in sd:
        d["projection_dim"] = sd[f"{prefix}text_projection.weight"].shape[0]
    else:
        d["projection_dim"] = hidden
    return d


def open_clip_dims(sd, prefix):
    """CLIP-G as stored in SDXL checkpoints (OpenCLIP layout under conditioner.embedders.1.model.)."""
    hidden = sd[f"{prefix}token_embedding.weight"].shape[1]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": _count(sd.keys(), prefix + "transformer.resblocks.{}."),
        "intermediate_size": sd[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_attention_heads": max(1, hidden // 16),
        "vocab_size": sd[f"{prefix}token_embedding.weight"].shape[0],
        "projection_dim": sd[f"{prefix}text_projection"].shape[1],
    }


def t5_dims(sd, prefix=""):
    heads = sd[f"{prefix}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    inner = sd[f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    return {
        "d_model": sd[f"{prefix}shared.weight"].shape[1],
        "vocab_size": sd[f"{prefix}shared.weight"].shape[0],
        "num_layers": _count(sd.keys(), prefix + "encoder.block.{}."),
        "num_heads": heads,
        "d_kv": inner // heads,
        "d_ff": sd[f"{prefix}encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
    }


def vae_dims(sd):
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = _count(sd.keys(), "encoder.down.{}.")
    return {
        "ch": ch,
        "ch_mult": [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
        "num_res_blocks": _count(sd.keys(), "encoder.down.0.block.{}."),
    }


def clip_vision_dims(sd):
    """CLIP vision (ComfyUI / HF layout: vision_model.*, visual_projection)."""
    p = "vision_model."
    hidden = sd[f"{p}embeddings.class_embedding"].shape[0]
    d = {"hidden_size": hidden,
         "num_hidden_layers": _count(sd.keys(), p + "encoder.layers.{}."),
         "intermediate_size": sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0],
         "num_attention_heads": max(1, hidden // 16)}
    if "visual_projection.weight" in sd:
        d["projection_dim"] = sd["visual_projection.weight"].shape[0]
    return d


def _write_cfg(cfg):
    import hashlib, tempfile
    data = json.dumps(cfg, sort_keys=True)
    d = os.path.join(tempfile.gettempdir(), "tiny_comfy_cfg")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, hashlib.sha1(data.encode()).hexdigest()[:16] + ".json")
    if not os.path.exists(p):
        with open(p, "w") as f:
            f.write(data)
    return p


def install():
    if _installed:
        return
    import comfy.sd
    import comfy.sd1_clip as sd1_clip
    import comfy.ldm.modules.diffusionmodules.model as ae_model

    # ---- FLUX / SDXL diffusion models: devkit.widths (the benchmark's narrow sizes need it too) ----
    widths.install()

    # ---- checkpoints: CLIP-L / CLIP-G widths from the checkpoint's own tensors ----
    orig_guess = comfy.sd.load_state_dict_guess_config

    @functools.wraps(orig_guess)
    def load_state_dict_guess_config(sd, *a, **k):
        dims = {}
        pl, pg = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
        if f"{pl}text_model.embeddings.token_embedding.weight" in sd:
            d = clip_dims(sd, pl)
            if d["hidden_size"] != 768:
                dims["sd1_clip_config.json"] = d
        if f"{pg}token_embedding.weight" in sd:
            d = open_clip_dims(sd, pg)
            if d["hidden_size"] != 1280:
                dims["clip_config_bigg.json"] = d
        tok = _CKPT_TE.set(dims or None)
        try:
            return orig_guess(sd, *a, **k)
        finally:
            _CKPT_TE.reset(tok)
    comfy.sd.load_state_dict_guess_config = load_state_dict_guess_config

    # ---- text encoders: CLIP-L / T5-XXL read fixed JSON configs at construction time ----
    orig_lte = comfy.sd.load_text_encoder_state_dicts

    @functools.wraps(orig_lte)
    def load_text_encoder_state_dicts(state_dicts=[], *a, **k):
        tok = _TE_SDS.set(list(state_dicts))
        try:
            return orig_lte(state_dicts, *a, **k)
        finally:
            _TE_SDS.reset(tok)
    comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts

    orig_clip_init = sd1_clip.SDClipModel.__init__

    def _find(sds, key):
        for sd in sds or []:
            if key in sd:
                return sd
        return None

    @functools.wraps(orig_clip_init)
    def clip_init(self, *a, **k):
        cfg_path = k.get("textmodel_json_config")
        sds, ckpt = _TE_SDS.get(), _CKPT_TE.get()
        if (sds or ckpt) and (cfg_path is None or isinstance(cfg_path, str)):
            name = os.path.basename(cfg_path) if cfg_path else "sd1_clip_config.json"
            path = cfg_path or os.path.join(os.path.dirname(sd1_clip.__file__), "sd1_clip_config.json")
            new = None
            if ckpt:
                new = ckpt.get(name)
            elif name == "t5_config_xxl.json":
                sd = _find(sds, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
                if sd is not None:
                    new = t5_dims(sd)
            elif name == "sd1_clip_config.json":
                sd = _find(sds, "text_model.embeddings.token_embedding.weight")
                if sd is not None:
                    new = clip_dims(sd)
            if new is not None:
                with open(path) as f:
                    cfg = json.load(f)
                if any(cfg.get(kk) != vv for kk, vv in new.items()):
                    cfg.update(new)
                    # old ComfyUI (2024) only accepts a *path* here, new accepts dict or path
                    k["textmodel_json_config"] = _write_cfg(cfg)
        return orig_clip_init(self, *a, **k)
    sd1_clip.SDClipModel.__init__ = clip_init

    # ---- VAE (AutoencoderKL / FLUX "ae") ----
    orig_vae_init = comfy.sd.VAE.__init__
    orig_enc_init = ae_model.Encoder.__init__
    orig_dec_init = ae_model.Decoder.__init__
    _vae_override = contextvars.ContextVar("tiny_vae_override", default=None)

    def _wrap(orig):
        @functools.wraps(orig)
        def init(self, *a, **k):
            ov = _vae_override.get()
            if ov:
                k.update(ov)
            return orig(self, *a, **k)
        return init
    ae_model.Encoder.__init__ = _wrap(orig_enc_init)
    ae_model.Decoder.__init__ = _wrap(orig_dec_init)

    @functools.wraps(orig_vae_init)
    def vae_init(self, sd=None, *a, **k):
        ov = None
        if sd is not None and "encoder.conv_in.weight" in sd and "encoder.down.0.block.0.conv1.weight" in sd:
            d = vae_dims(sd)
            if d["ch"] != 128 or d["ch_mult"] != [1, 2, 4, 4] or d["num_res_blocks"] != 2:
                ov = d
        tok = _vae_override.set(ov)
        try:
            return orig_vae_init(self, sd, *a, **k)
        finally:
            _vae_override.reset(tok)
    comfy.sd.VAE.__init__ = vae_init

    # ---- CLIP vision: ClipVisionModel reads a fixed JSON config chosen by layer count ----
    import comfy.clip_vision as clip_vision
    orig_cv_from_sd = clip_vision.load_clipvision_from_sd
    orig_cv_init = clip_vision.ClipVisionModel.__init__
    _cv_dims = contextvars.ContextVar("tiny_clip_vision_dims", default=None)

    @functools.wraps(orig_cv_from_sd)
    def load_clipvision_from_sd(sd, *a, **k):
        dims = clip_vision_dims(sd) if "vision_model.embeddings.class_embedding" in sd else None
        tok = _cv_dims.set(dims)
        try:
            return orig_cv_from_sd(sd, *a, **k)
        finally:
            _cv_dims.reset(tok)
    clip_vision.load_clipvision_from_sd = load_clipvision_from_sd

    @functools.wraps(orig_cv_init)
    def cv_init(self, json_config, *a, **k):
        dims = _cv_dims.get()
        if dims and isinstance(json_config, str):
            with open(json_config) as f:
                cfg = json.load(f)
            if any(cfg.get(kk) != vv for kk, vv in dims.items()):
                json_config = _write_cfg(dict(cfg, **dims))
        return orig_cv_init(self, json_config, *a, **k)
    clip_vision.ClipVisionModel.__init__ = cv_init
    _installed["ok"] = True
