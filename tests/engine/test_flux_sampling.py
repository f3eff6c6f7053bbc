"""engine.flux_sampling (XLabs' FLUX sampling) against the formulas, without ComfyUI."""
import math
import os
import subprocess
import sys

import pytest
import torch

from comfyui_deepytorch.engine import flux_sampling as fs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("module", ["flux_sampling", "step_cache"])
def test_engine_module_imports_without_comfyui(module):
    code = ("import sys, types; pkg = types.ModuleType('p'); pkg.__path__ = [sys.argv[1]]; sys.modules['p'] = pkg; "
            f"import p.engine.{module}; "
            "print(sorted(m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'folder_paths'))))")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sizes_and_sequence_length():
    assert fs.image_size((1, 16, 8, 8)) == (64, 64)
    assert fs.image_size((2, 4, 12, 9)) == (96, 64)        # odd latent: whole 16-px patches
    assert fs.image_seq_len(64, 64) == 16
    assert fs.image_seq_len(1024, 1024) == 4096


@pytest.mark.parametrize("seq", [16, 256, 1000, 4096])
def test_schedule_is_the_shifted_flux_schedule(seq):
    mu = 0.5 + (1.15 - 0.5) * (seq - 256) / (4096 - 256)
    expected = [1.0] + [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in (0.75, 0.5, 0.25)] + [0.0]
    got = fs.schedule(4, seq)
    assert len(got) == 5
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert all(a > b for a, b in zip(got, got[1:]))
    if seq == 256:
        assert fs.shift_mu(seq) == pytest.approx(0.5)
    if seq == 4096:
        assert fs.shift_mu(seq) == pytest.approx(1.15)


def test_denoise_strength_cuts_the_end_of_the_schedule():
    ts = fs.schedule(4, 16)
    assert fs.truncate_for_denoise(ts, 1.0) == ts
    assert fs.truncate_for_denoise(ts, 0.995) == ts              # above 0.99: untouched
    assert fs.truncate_for_denoise(ts, 0.6) == ts[:3]            # int(5 * 0.6) = 3 timesteps: 2 steps, ends > 0
    assert fs.truncate_for_denoise(ts, 0.6)[-1] > 0
    assert fs.truncate_for_denoise(ts, 0.1) == []


def test_img2img_start_index():
    ts = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert fs.img2img_start(ts, 1.0) == (1.0, ts)                 # index 0: pure noise start
    assert fs.img2img_start(ts, 0.5) == (0.4, ts[3:])             # int(0.5 * 6) = 3
    assert fs.img2img_start(ts, 0.01) == (0.0, [0.0])             # clamped to the last timestep: no step
    assert fs.img2img_start([], 0.5) == (None, [])


def test_noise_is_a_seeded_generator_draw_in_the_compute_dtype():
    for dtype in (torch.float32, torch.float16):
        n = fs.noise(2, 64, 96, "cpu", dtype, 123)
        ref = torch.randn(2, 16, 8, 12, dtype=dtype, generator=torch.Generator().manual_seed(123))
        assert n.dtype == dtype and torch.equal(n, ref)
    assert fs.noise(1, 72, 72, "cpu", torch.float32, 0).shape == (1, 16, 10, 10)   # 2 * ceil(72 / 16)
    assert fs.noise(1, 16, 16, "cpu", torch.float32, 0xffffffffffffffff).shape == (1, 16, 2, 2)


def test_pack_layout_and_roundtrip():
    x = torch.randn(2, 16, 6, 4)
    p = fs.pack(x)
    assert p.shape == (2, 6, 64)
    for i, j, c, ph, pw in ((0, 0, 0, 0, 0), (2, 1, 5, 1, 0), (1, 1, 15, 1, 1)):
        assert p[1, i * 2 + j, c * 4 + ph * 2 + pw] == x[1, c, 2 * i + ph, 2 * j + pw]
    assert torch.equal(fs.unpack(p, 48, 32), x)


def test_position_ids():
    ids = fs.image_ids(2, 4, 6, "cpu", torch.float16)
    assert ids.shape == (2, 6, 3) and ids.dtype == torch.float16
    assert ids[1].tolist() == [[0, r, c] for r in range(2) for c in range(3)]
    assert torch.equal(fs.text_ids(2, 5, "cpu", torch.float32), torch.zeros(2, 5, 3))


def test_latent_space_constants():
    x = torch.tensor([0.1159, 1.0])
    assert fs.to_model_space(x).tolist() == pytest.approx([0.0, (1 - 0.1159) * 0.3611])
    assert fs.from_model_space(fs.to_model_space(x)).tolist() == pytest.approx(x.tolist())


def test_compute_dtype_follows_xlabs_where_it_can_run_else_the_model():
    fp16, bf16, fp32 = torch.float16, torch.bfloat16, torch.float32
    assert fs.compute_dtype(fp16, fp32, xlabs=fp16) == fp16      # --fp16-unet on CPU: XLabs runs, we match it
    assert fs.compute_dtype(fp32, None, xlabs=fp16) == fp32      # float32 model on CPU: XLabs would fail
    assert fs.compute_dtype(bf16, None, xlabs=bf16) == bf16      # GPU with bf16
    assert fs.compute_dtype(torch.float8_e4m3fn, bf16, xlabs=bf16) == bf16   # fp8 weights, manual cast
    assert fs.compute_dtype(fp16, None, xlabs=bf16) == fp16      # fp16 weights without casting: model's own
    assert fs.xlabs_dtype() == (bf16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else fp16)


def test_euler_with_true_cfg_from_a_step_index():
    ts = [1.0, 0.75, 0.5, 0.0]
    calls = []

    def model_fn(img, t_vec, negative, step):
        calls.append((step, negative, t_vec[0].item()))
        return torch.full_like(img, -1.0 if negative else 2.0)

    x = torch.zeros(1, 4, 64)
    out = fs.euler(model_fn, x, ts, true_gs=3.0, timestep_to_start_cfg=1)
    # step 0: v = 2; steps 1, 2: v = -1 + 3 * (2 - -1) = 8
    expected = 0 + (0.75 - 1.0) * 2 + (0.5 - 0.75) * 8 + (0.0 - 0.5) * 8
    assert torch.allclose(out, torch.full_like(x, expected))
    assert calls == [(0, False, 1.0), (1, False, 0.75), (1, True, 0.75), (2, False, 0.5), (2, True, 0.5)]
    no_cfg = fs.euler(model_fn, x, ts, true_gs=3.0, timestep_to_start_cfg=20)
    assert torch.allclose(no_cfg, torch.full_like(x, -2.0))


def test_euler_integrates_a_linear_velocity_field():
    # v(x, t) = x: each step multiplies by (1 + dt); the product is the reference
    ts = fs.schedule(6, 64)
    x = torch.randn(1, 3, 64, dtype=torch.float64)
    out = fs.euler(lambda img, t, neg, i: img, x, ts, 1.0, 100)
    factor = 1.0
    for a, b in zip(ts, ts[1:]):
        factor *= 1 + (b - a)
    assert torch.allclose(out, x * factor)


def test_euler_checks_interrupt_before_every_step_and_reports_progress():
    seen = []

    class Stop(Exception):
        pass

    def check():
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        fs.euler(lambda img, t, neg, i: img, torch.zeros(1, 1, 4), [1.0, 0.6, 0.3, 0.0], 1.0, 9,
                 callback=lambda i, img, pred, tc, tp, total: seen.append((i, total)), check_interrupt=check)
    assert seen == [(0, 3), (1, 3)]


def test_predicted_x0_of_the_flow():
    x0, noise = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    t = 0.3
    xt = t * noise + (1 - t) * x0
    assert torch.allclose(fs.predicted_x0(xt, noise - x0, t), x0, atol=1e-6)


def test_plan_text_to_image():
    latent = torch.zeros(2, 4, 8, 12)
    p = fs.plan(latent, 5, 4, 0.0, 1.0, "cpu", torch.float32)
    assert (p.batch, p.height, p.width, p.img2img, p.steps) == (2, 64, 96, False, 4)
    assert p.timesteps == fs.schedule(4, 24)
    assert torch.equal(p.start, fs.pack(fs.noise(2, 64, 96, "cpu", torch.float32, 5)))


def test_plan_image_to_image_mixes_the_input_at_the_start_timestep():
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 16, 8, 8, generator=g)
    p = fs.plan(latent, 3, 4, 0.5, 1.0, "cpu", torch.float32)
    ts = fs.schedule(4, 16)
    t = ts[2]                                             # int((1 - 0.5) * 5) = 2
    assert p.img2img and p.timesteps == ts[2:] and p.steps == 2 and p.schedule_len == 5
    noise = fs.noise(1, 64, 64, "cpu", torch.float32, 3)
    expected = t * noise + (1 - t) * ((latent - 0.1159) * 0.3611)
    assert torch.allclose(fs.unpack(p.start, 64, 64), expected, atol=1e-6)


def test_plan_where_xlabs_crashes():
    # 16 channels with strength 0: the latent only sets the size (XlabsSampler returns the input unchanged)
    p = fs.plan(torch.ones(1, 16, 8, 8), 0, 4, 0.0, 1.0, "cpu", torch.float32)
    assert not p.img2img and p.steps == 4
    assert torch.equal(p.start, fs.pack(fs.noise(1, 64, 64, "cpu", torch.float32, 0)))
    # no latent: 1024 x 1024, batch 1
    p = fs.plan(None, 0, 2, 0.0, 1.0, "cpu", torch.float32)
    assert (p.batch, p.height, p.width, p.start.shape) == (1, 1024, 1024, (1, 4096, 64))
    # denoise_strength leaving no step with image-to-image: the input comes back
    latent = torch.randn(1, 16, 8, 8)
    p = fs.plan(latent, 0, 4, 0.5, 0.1, "cpu", torch.float32)
    assert p.steps == 0
    assert torch.allclose(fs.finish(p.start, p), latent, atol=1e-5)
    # odd image-to-image latent: cropped to whole patches
    p = fs.plan(torch.randn(1, 16, 9, 8), 0, 4, 0.5, 1.0, "cpu", torch.float32)
    assert (p.height, p.width, p.start.shape) == (64, 64, (1, 16, 64))


@pytest.mark.parametrize("shape", [(1, 16, 8, 8, 2), (1, 3, 8, 8), (1, 16, 1, 8), (16, 8, 8)])
def test_bad_latent_shape_names_node_and_input(shape):
    with pytest.raises(ValueError) as e:
        fs.plan(torch.zeros(shape), 0, 4, 0.0, 1.0, "cpu", torch.float32)
    assert str(e.value) == ("DeepTorch Sampler: latent_image must be an image latent of shape (batch, 16 or 4 "
                            f"channels, height >= 2, width >= 2), got {shape}")


def test_batched_conditioning():
    c = torch.randn(1, 3, 4)
    assert torch.equal(fs.batched(c, 3), c.repeat(3, 1, 1))
    c2 = torch.randn(2, 3, 4)
    assert fs.batched(c2, 2) is c2
