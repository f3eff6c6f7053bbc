"""FLUX sampling as XLabs' XlabsSampler does it (x-flux-comfyui `sampling.py` / `nodes.py`), torch only.

Imports without ComfyUI (nothing here may import comfy.*): the model is a callable handed in by the caller.

Spaces: ComfyUI keeps FLUX latents in the VAE's raw space; the model works on `to_model_space(latent)` =
(latent - 0.1159) * 0.3611 (XLabs' LATENT_PROCESSOR_COMFY, the same constants as ComfyUI's Flux latent format),
packed into 2x2 patches: (b, 16, H, W) -> (b, H/2 * W/2, 64).

Every formula reproduces XLabs' arithmetic operation by operation (python floats mixed into tensors of the compute
dtype), so that in XLabs' dtype the latents are XlabsSampler's: equal bit for bit on ComfyUI's stock blocks in one
process (tested with torch.equal), within 1e-4 through the server and with XLabs' own LoRA / IP-adapter blocks.
"""
import math
from dataclasses import dataclass, field

import torch

LATENT_SCALE = 0.3611     # XLabs LATENT_PROCESSOR_COMFY.scale_factor (= ComfyUI latent_formats.Flux.scale_factor)
LATENT_SHIFT = 0.1159     # XLabs LATENT_PROCESSOR_COMFY.shift_factor (= ComfyUI latent_formats.Flux.shift_factor)
LATENT_CHANNELS = 16      # FLUX latents; only these are used as image-to-image input
SIZE_ONLY_CHANNELS = (4,)  # SD latents (EmptyLatentImage): XLabs reads only their size
DEFAULT_SIZE = (1024, 1024)   # pixels (height, width) when no latent_image is connected (FLUX's native size)
BASE_SEQ, BASE_SHIFT = 256, 0.5
MAX_SEQ, MAX_SHIFT = 4096, 1.15


# -- dtype -----------------------------------------------------------------------------------------------------
def xlabs_dtype():
    """The dtype XlabsSampler computes in: bfloat16 where CUDA supports it, else float16."""
    try:
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
    except Exception:   # torch builds without CUDA support may raise instead of answering
        pass
    return torch.float16


def compute_dtype(weight_dtype, manual_cast_dtype=None, xlabs=None):
    """The dtype to sample in.

    XlabsSampler casts its inputs to `xlabs` (bf16/fp16). That runs where the model's layers accept such inputs:
    the weights are stored in that dtype, or the layers cast their weights to the input's dtype (ComfyUI's
    manual-cast ops, e.g. fp16 weights on CPU, fp8 weights). There we compute in `xlabs` too, which is what makes
    the result identical to XlabsSampler's. Elsewhere (e.g. a float32 model on CPU, where XlabsSampler fails) we
    compute in the model's own dtype: its manual-cast dtype if it has one, else its weight dtype.
    """
    xlabs = xlabs or xlabs_dtype()
    if weight_dtype == xlabs or manual_cast_dtype is not None:
        return xlabs
    if weight_dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return weight_dtype
    return torch.float32


# -- sizes, schedule -------------------------------------------------------------------------------------------
def image_size(latent_shape):
    """(height, width) in pixels as XlabsSampler derives them from a latent (b, c, h, w): whole 16-px patches."""
    h, w = latent_shape[-2:]
    return (h // 2) * 16, (w // 2) * 16


def image_seq_len(height, width):
    """Number of packed image tokens XLabs uses for the schedule shift."""
    return (width // 8) * (height // 8) // 4


def shift_mu(seq_len, x1=BASE_SEQ, y1=BASE_SHIFT, x2=MAX_SEQ, y2=MAX_SHIFT):
    """mu interpolated linearly from the image sequence length (256 -> 0.5, 4096 -> 1.15), XLabs' get_lin_function."""
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return m * seq_len + b


def time_shift(mu, sigma, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def schedule(steps, seq_len, shift=True):
    """steps + 1 timesteps from 1 to 0 (float32 arithmetic, as XLabs' get_schedule), shifted towards 1."""
    timesteps = torch.linspace(1, 0, steps + 1)
    if shift:
        timesteps = time_shift(shift_mu(seq_len), 1.0, timesteps)
    return timesteps.tolist()


def truncate_for_denoise(timesteps, denoise_strength):
    """XLabs' denoise_strength: <= 0.99 keeps only the first int(len * strength) timesteps (drops the END of the
    schedule: the last, least noisy steps are not run; NOT ComfyUI's denoise, which drops the start)."""
    if denoise_strength <= 0.99:
        return timesteps[:int(len(timesteps) * denoise_strength)]
    return list(timesteps)


def img2img_start(timesteps, strength):
    """(t, remaining timesteps) where image-to-image starts: index int((1 - strength) * len), clamped to the
    schedule (XLabs' denoise). None for t when the schedule is empty (nothing to run: the input is returned)."""
    if not timesteps:
        return None, []
    s = min(max(float(strength), 0.0), 1.0)
    t_idx = min(max(int((1 - s) * len(timesteps)), 0), len(timesteps) - 1)
    return timesteps[t_idx], timesteps[t_idx:]


# -- tensors: noise, packing, ids, latent space ----------------------------------------------------------------
def latent_size(height, width):
    """(h, w) of the sampled latent for an image of height x width pixels: 2 * ceil(size / 16)."""
    return 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)


def noise(batch, height, width, device, dtype, seed):
    """XLabs' get_noise: (batch, 16, 2*ceil(h/16), 2*ceil(w/16)) drawn in `dtype` from a generator on `device`."""
    return torch.randn(batch, LATENT_CHANNELS, *latent_size(height, width), device=device, dtype=dtype,
                       generator=torch.Generator(device=device).manual_seed(seed))


def pack(x):
    """(b, c, H, W) -> (b, H/2 * W/2, c*4): 2x2 patches, channel-major inside a patch (einops
    'b c (h ph) (w pw) -> b (h w) (c ph pw)')."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x, height, width):
    """Inverse of pack for an image of height x width pixels (XLabs' unpack)."""
    b, _, d = x.shape
    h, w = math.ceil(height / 16), math.ceil(width / 16)
    c = d // 4
    x = x.reshape(b, h, w, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h * 2, w * 2)


def image_ids(batch, h, w, device, dtype):
    """Position ids (b, h/2 * w/2, 3) of a packed (b, c, h, w) latent: (0, row, column), as XLabs' prepare."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    ids = ids.reshape(1, (h // 2) * (w // 2), 3).expand(batch, -1, -1)
    return ids.to(device, dtype=dtype)


def text_ids(batch, length, device, dtype):
    return torch.zeros(batch, length, 3).to(device, dtype=dtype)


def to_model_space(latent):
    """ComfyUI latent -> the space the model samples in (XLabs' LATENT_PROCESSOR_COMFY.go_back)."""
    return (latent - LATENT_SHIFT) * LATENT_SCALE


def from_model_space(x):
    """Sampled latent -> ComfyUI latent (XLabs' LATENT_PROCESSOR_COMFY.__call__)."""
    return (x / LATENT_SCALE) + LATENT_SHIFT


def batched(t, batch):
    """A conditioning tensor repeated to the batch if it has batch 1 (XLabs' prepare)."""
    if t.shape[0] == 1 and batch > 1:
        return t.expand(batch, *t.shape[1:]).contiguous()
    return t


# -- the plan: where sampling starts and which timesteps it runs -----------------------------------------------
@dataclass
class Plan:
    batch: int
    height: int                  # pixels
    width: int
    timesteps: list              # the timesteps the Euler loop walks (len - 1 steps)
    img2img: bool                # the input latent is mixed in at timesteps[0]
    schedule_len: int = 0        # timesteps after denoise_strength, before the image-to-image start (ControlNet)
    start: torch.Tensor = field(repr=False, default=None)   # packed starting point (b, tokens, 64)
    notes: list = field(default_factory=list)               # what was decided and why (for the log)

    @property
    def steps(self):
        return max(len(self.timesteps) - 1, 0)


def check_latent(samples, node="DeepTorch Sampler"):
    """Raise ValueError with the node and input named for a latent the sampler cannot use."""
    shape = tuple(samples.shape)
    if samples.ndim != 4 or shape[1] not in (LATENT_CHANNELS, *SIZE_ONLY_CHANNELS) or shape[2] < 2 or shape[3] < 2:
        raise ValueError(f"{node}: latent_image must be an image latent of shape (batch, 16 or 4 channels, "
                         f"height >= 2, width >= 2), got {shape}")


def plan(samples, seed, steps, image_to_image_strength, denoise_strength, device, dtype, node="DeepTorch Sampler"):
    """Noise, schedule and starting point as XlabsSampler, with sane behaviour where XlabsSampler crashes:

    - `samples` None (no latent connected): text-to-image at DEFAULT_SIZE, batch 1 (XlabsSampler: TypeError).
    - a 16-channel latent is the image-to-image input only when image_to_image_strength > 0; with 0 it only sets
      the size, as a 4-channel latent does (XlabsSampler returns the input unchanged, or raises IndexError with a
      ControlNet condition).
    - odd latent sizes: the image is the largest whole number of 16-px patches (XLabs' size); an image-to-image
      input is cropped to it (XlabsSampler fails on the packing).
    - a schedule that denoise_strength leaves empty runs no step (XlabsSampler: IndexError with image-to-image).
    """
    notes = []
    if samples is None:
        batch, (height, width) = 1, DEFAULT_SIZE
        channels = 0
        notes.append(f"no latent_image: text-to-image at {width}x{height}, batch 1")
    else:
        check_latent(samples, node)
        batch, channels = samples.shape[0], samples.shape[1]
        height, width = image_size(samples.shape)
    timesteps = truncate_for_denoise(schedule(steps, image_seq_len(height, width)), denoise_strength)
    schedule_len = len(timesteps)
    x = noise(batch, height, width, device, dtype, seed)
    img2img = channels == LATENT_CHANNELS and image_to_image_strength > 0
    if channels == LATENT_CHANNELS and not img2img:
        notes.append("image_to_image_strength is 0: the 16-channel latent_image only sets the size")
    if channels in SIZE_ONLY_CHANNELS and image_to_image_strength > 0:
        notes.append(f"image_to_image_strength ignored: latent_image has {channels} channels, image-to-image "
                     "needs a 16-channel FLUX latent")
    if img2img:
        h, w = x.shape[-2:]
        orig = samples[:, :, :h, :w]
        if orig.shape[-2:] != samples.shape[-2:]:
            notes.append(f"latent_image cropped from {tuple(samples.shape[-2:])} to {(h, w)} (whole 16-px patches)")
        orig = to_model_space(orig).to(device, dtype=dtype)
        t, timesteps = img2img_start(timesteps, image_to_image_strength)
        orig = pack(orig).to(device, dtype=dtype)
        x = pack(x)
        x = orig if t is None else t * x + (1.0 - t) * orig
    else:
        x = pack(x)
    if len(timesteps) < 2:
        notes.append("denoise_strength leaves no step of the schedule: nothing is sampled")
    return Plan(batch, height, width, timesteps, img2img, schedule_len, x, notes)


# -- the sampler -----------------------------------------------------------------------------------------------
def euler(model_fn, img, timesteps, true_gs, timestep_to_start_cfg, callback=None, check_interrupt=None):
    """Euler steps over `timesteps` (XLabs' denoise). `model_fn(img, t_vec, negative, step)` returns the velocity;
    from step index `timestep_to_start_cfg` on it is also called with negative=True and the prediction becomes
    `neg + true_gs * (pos - neg)` (true CFG). `callback(step, img, pred, t_curr, t_prev, total)` after each step."""
    total = max(len(timesteps) - 1, 0)
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        if check_interrupt is not None:
            check_interrupt()
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        pred = model_fn(img, t_vec, False, i)
        if i >= timestep_to_start_cfg:
            neg_pred = model_fn(img, t_vec, True, i)
            pred = neg_pred + true_gs * (pred - neg_pred)
        img = img + (t_prev - t_curr) * pred
        if callback is not None:
            callback(i, img, pred, t_curr, t_prev, total)
    return img


def predicted_x0(img, pred, t_curr):
    """The clean sample the model predicts at time t (flow matching: x_t = t * noise + (1 - t) * x0)."""
    return img - t_curr * pred


def finish(img, p):
    """Packed model-space result -> ComfyUI latent (b, 16, H, W), computed in the sampling dtype as XLabs does."""
    return from_model_space(unpack(img, p.height, p.width))
