"""IDiffFacePipeline: plumbing on the tiny models (samplers against hand-written loops, one forward
per step, rng modes, batch independence, determinism, outputs, callbacks, refusals, save/load), and
IDIFF.md's golden sampler table on the full-size deterministic models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthface.errors import InvalidInputError, ModelNotFoundError
from synthface.generators.idiff.autoencoder import decode_latents
from synthface.generators.idiff.pipeline import IDiffFacePipeline, to_uint8
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler, IDiffDDPMScheduler
from synthface.generators.idiff.tiny import tiny_unet, tiny_vqmodel
from synthface.generators.idiff.two_stage import attention_map

pytestmark = pytest.mark.usefixtures("one_thread")
SIDE = 8  # tiny latents: 8x8 -> 32 px decoded -> 112 written


def make(scheduler=None, learn_empty_context=True) -> IDiffFacePipeline:
    pipe = IDiffFacePipeline(tiny_unet(learn_empty_context), tiny_vqmodel(), scheduler or IDiffDDIMScheduler(),
                             latent_size=SIDE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return make()


@pytest.fixture(scope="module")
def ddpm_pipe():
    """IDiff-Face's variant (zero empty context) on a 20-step DDPM schedule (the loop visits all of them)."""
    return make(IDiffDDPMScheduler(num_train_timesteps=20), learn_empty_context=False)


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)), dim=1)


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def start(seeds) -> torch.Tensor:
    return torch.stack([torch.randn(3, SIDE, SIDE, generator=torch.Generator().manual_seed(s)) for s in seeds])


def latents(pipe, c, seeds, **kw) -> torch.Tensor:
    return pipe(c, generator=gens(seeds), output_type="latent", **kw).images


# ------------------------------------------------------------------ samplers against hand loops

def hand_cfg(unet, c, x, steps, s, negative=None, w_of_t=None):
    sched = IDiffDDIMScheduler()
    sched.set_timesteps(steps)
    for t in sched.timesteps.tolist():
        eps_c = unet(x, t, c)
        if negative is not None:
            w = w_of_t(t)
            eps = (1 + w) * eps_c - w * unet(x, t, negative)
        else:
            eps = (1 + s) * eps_c - s * unet(x, t, None)
        x = sched.step(eps, t, x).prev_sample
    return x


@torch.no_grad()
def test_cfg_matches_a_hand_loop(pipe):
    c = ids(2)
    got = latents(pipe, c, [1, 2], sampler="cfg", num_inference_steps=6, guidance_scale=2.5)
    want = hand_cfg(pipe.unet, c, start([1, 2]), 6, 1.5)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))


@torch.no_grad()
def test_negative_guidance_matches_a_hand_loop(pipe):
    c, neg = ids(2), ids(2, seed=5)
    got = latents(pipe, c, [3, 4], sampler="cfg", num_inference_steps=5, negative_embeds=neg, negative_scale=0.7)
    want = hand_cfg(pipe.unet, c, start([3, 4]), 5, None, neg, lambda t: 0.7)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))
    got = latents(pipe, c, [3, 4], sampler="cfg", num_inference_steps=5, negative_embeds=neg, negative_scale=0.7,
                  adaptive_negative=True)
    want = hand_cfg(pipe.unet, c, start([3, 4]), 5, None, neg, lambda t: 0.7 * (1 - t / 1000))
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))
    # the default weight is NegFaceDiff's 0.5, and guidance_scale g names the same weight as 1 + w
    default = latents(pipe, c, [3, 4], sampler="cfg", num_inference_steps=5, negative_embeds=neg)
    assert torch.equal(default, latents(pipe, c, [3, 4], sampler="cfg", num_inference_steps=5, negative_embeds=neg,
                                        guidance_scale=1.5))


@torch.no_grad()
def test_zero_negative_is_a_zero_context_not_the_empty_embedding(pipe):
    c = ids(1)
    zero = latents(pipe, c, [0], num_inference_steps=3, negative_embeds=torch.zeros(512))
    want = hand_cfg(pipe.unet, c, start([0]), 3, None, torch.zeros(1, 512), lambda t: 0.5)
    assert torch.allclose(zero, want, atol=1e-5 * float(want.abs().max()))
    empty_cfg = latents(pipe, c, [0], num_inference_steps=3, guidance_scale=1.5)
    assert not torch.allclose(zero, empty_cfg, atol=1e-3)


@torch.no_grad()
def test_ddpm_reference_matches_the_published_loop(ddpm_pipe):
    c = ids(2)
    torch.manual_seed(42)
    got = ddpm_pipe(c, sampler="ddpm", rng="reference", output_type="latent").images
    torch.manual_seed(42)
    x = torch.randn(2, 3, SIDE, SIDE)
    b = IDiffDDPMScheduler(num_train_timesteps=20).buffers
    for i in range(19, -1, -1):
        z = torch.randn(2, 3, SIDE, SIDE) if i > 1 else 0  # drawn at the start of the step, as published
        eps = ddpm_pipe.unet(x, i, c)
        x = b["sqrt_alphas_inv"][i] * (x - eps * b["one_minus_alphas_over_sqrt_one_minus_alpha_bars"][i]) + b["sigmas"][i] * z
    assert torch.allclose(got, x, atol=1e-5 * float(x.abs().max()))


@torch.no_grad()
def test_ddpm_guided_and_per_image_noise(ddpm_pipe):
    c = ids(1)
    g = torch.Generator().manual_seed(8)
    got = ddpm_pipe(c, sampler="ddpm", guidance_scale=2.0, generator=[torch.Generator().manual_seed(8)],
                    output_type="latent").images
    x = torch.randn(1, 3, SIDE, SIDE, generator=g)
    sched = IDiffDDPMScheduler(num_train_timesteps=20)
    for i in range(19, -1, -1):
        eps = 2 * ddpm_pipe.unet(x, i, c) - ddpm_pipe.unet(x, i, None)
        x = sched.step(eps, i, x, variance_noise=torch.randn(1, 3, SIDE, SIDE, generator=g) if i > 1 else None).prev_sample
    assert torch.allclose(got, x, atol=1e-5 * float(x.abs().max()))


def uiface_hand(unet, c, x, steps, th, stage, s=1.0):
    """UIFace's two-stage loop written out: flags on from the step after distance < th."""
    sched = IDiffDDIMScheduler()
    sched.set_timesteps(steps)
    flags, previous, distances = [False] * c.shape[0], None, []
    for t in sched.timesteps.tolist():
        if t >= stage:
            _, eps, cross = unet.forward_pair(x, t, c, use_context=torch.tensor(flags), restandardise=False,
                                              return_cross=True)
            current = attention_map(cross, x.shape[-1])
            if previous is not None:
                d = (current - previous).abs().mean(dim=(1, 2))
                distances.append(d)
                flags = [f or float(v) < th for f, v in zip(flags, d)]
            previous = current
        else:
            eps_a, eps_b, _ = unet.forward_pair(x, t, c, use_context=True, restandardise=True)
            eps = (1 + s) * eps_b - s * eps_a
        x = sched.step(eps, t, x).prev_sample
    return x, torch.stack(distances)


@torch.no_grad()
def test_uiface_switch_logic_against_a_hand_computation(pipe):
    c, seeds = ids(3, seed=1), [5, 6, 7]
    never = pipe(c, sampler="uiface", num_inference_steps=10, mse_threshold=1e-9, generator=gens(seeds),
                 output_type="latent")
    d = never.partition_distances
    assert d.shape == (4, 3) and never.switched_at.tolist() == [-1, -1, -1]
    hand, hand_d = uiface_hand(pipe.unet, c, start(seeds), 10, 1e-9, 500)
    assert torch.allclose(never.images, hand, atol=1e-5 * float(hand.abs().max()))
    assert torch.allclose(d, hand_d, atol=1e-6)
    # The tiny model's maps settle step by step; a threshold between the last and the earlier distances
    # switches every image at the last stage-1 step (t = 500), which changes nothing.
    assert float(d[-1].max()) < float(d[:-1].min())
    last = pipe(c, sampler="uiface", num_inference_steps=10, mse_threshold=float(d[-1].max() + d[:-1].min()) / 2,
                generator=gens(seeds), output_type="latent")
    assert last.switched_at.tolist() == [500, 500, 500]
    assert torch.equal(last.images, never.images)
    # A switch one step earlier (t = 600) gives the identity to stage 1's last step: it matters.
    th = float(d[-2].min()) * 1.0001
    assert th < float(d[:-2].min())
    earlier = pipe(c, sampler="uiface", num_inference_steps=10, mse_threshold=th, generator=gens(seeds),
                   output_type="latent")
    first = int(d[-2].argmin())
    assert int(earlier.switched_at[first]) == 600
    hand, _ = uiface_hand(pipe.unet, c, start(seeds), 10, th, 500)
    assert torch.allclose(earlier.images, hand, atol=1e-5 * float(hand.abs().max()))
    assert float((earlier.images[first] - never.images[first]).abs().max()) > 1e-3


class Counter:
    """Counts the UNet's forwards (module calls and forward_pair) and the rows each saw."""

    def __init__(self, unet, monkeypatch):
        self.rows = []
        unet_forward_pair = unet.forward_pair
        monkeypatch.setattr(unet, "forward_pair", lambda x, *a, **k: (self.rows.append(2 * x.shape[0]),
                                                                      unet_forward_pair(x, *a, **k))[1])
        self.hook = unet.register_forward_hook(lambda m, args, out: self.rows.append(args[0].shape[0]))


@pytest.mark.parametrize(("kw", "rows"), [(dict(sampler="cfg"), 4), (dict(sampler="uiface"), 4),
                                          (dict(sampler="cfg", guidance_scale=1.0), 2),
                                          (dict(sampler="cfg", negative_embeds=ids(1, 3)), 4)])
def test_one_forward_per_step(pipe, monkeypatch, kw, rows):
    count = Counter(pipe.unet, monkeypatch)
    try:
        latents(pipe, ids(2), [0, 1], num_inference_steps=5, **kw)
    finally:
        count.hook.remove()
    assert count.rows == [rows] * 5


# ------------------------------------------------------------------ randomness

@pytest.mark.parametrize("kw", [dict(sampler="cfg", num_inference_steps=4), dict(sampler="uiface", num_inference_steps=6),
                                dict(sampler="cfg", num_inference_steps=4, eta=0.5)])
def test_per_image_batch_independence(pipe, kw):
    """Image i alone equals image i in a batch of 3, to float rounding: kernels differ by batch size, and
    the random-weight latents reach the hundreds (x0 estimates blow up at high t), so the bound is 1e-4
    relative to the latents' scale."""
    c = ids(3, seed=2)
    batch = latents(pipe, c, [10, 11, 12], **kw)
    for i in range(3):
        alone = latents(pipe, c[i:i + 1], [10 + i], **kw)
        assert float((alone[0] - batch[i]).abs().max()) < 1e-4 * max(1.0, float(batch[i].abs().max()))
    other = latents(pipe, c, [10, 11, 99], **kw)  # a batch-mate's seed changes only that image
    assert float((other[:2] - batch[:2]).abs().max()) < 1e-4 * max(1.0, float(batch.abs().max()))
    assert float((other[2] - batch[2]).abs().max()) > 1.0


def test_per_image_batch_independence_ddpm(ddpm_pipe):
    c = ids(3, seed=2)
    batch = latents(ddpm_pipe, c, [10, 11, 12], sampler="ddpm")
    alone = latents(ddpm_pipe, c[2:], [12], sampler="ddpm")
    assert float((alone[0] - batch[2]).abs().max()) < 1e-4 * max(1.0, float(batch[2].abs().max()))


def test_deterministic_and_seed_dependent(pipe):
    c = ids(2)
    a = pipe(c, sampler="uiface", num_inference_steps=6, generator=gens([1, 2]))
    b = pipe(c, sampler="uiface", num_inference_steps=6, generator=gens([1, 2]))
    assert torch.equal(a.images, b.images) and torch.equal(a.partition_distances, b.partition_distances)
    other = pipe(c, sampler="uiface", num_inference_steps=6, generator=gens([1, 3]))
    assert torch.equal(other.images[0], a.images[0]) and not torch.equal(other.images[1], a.images[1])


@torch.no_grad()
def test_reference_starts_from_the_global_generator(pipe):
    c = ids(2)
    torch.manual_seed(99)
    ref = pipe(c, rng="reference", num_inference_steps=3, output_type="latent").images
    torch.manual_seed(99)
    want = hand_cfg(pipe.unet, c, torch.randn(2, 3, SIDE, SIDE), 3, 1.0)
    assert torch.allclose(ref, want, atol=1e-5 * float(want.abs().max()))
    torch.manual_seed(99)
    eta = pipe(c, rng="reference", num_inference_steps=3, eta=1.0, output_type="latent").images
    assert not torch.allclose(eta, ref)  # fresh global draws after each update


# ------------------------------------------------------------------ outputs and callbacks

@torch.no_grad()
def test_output_types(pipe):
    c = ids(2)
    out = pipe(c, num_inference_steps=3, generator=gens([0, 1]))
    lat = latents(pipe, c, [0, 1], num_inference_steps=3)
    raw = decode_latents(pipe.vqvae, lat)
    want = F.interpolate((raw.clamp(-1, 1) + 1) / 2, size=(112, 112), mode="bilinear", align_corners=False)
    assert out.images.shape == (2, 3, 112, 112) and out.images.dtype == torch.float32
    assert torch.allclose(out.images, want, atol=1e-6)
    assert torch.equal(out.id_embeds, c) and out.partition_distances is None and out.switched_at is None
    arr = pipe(c, num_inference_steps=3, generator=gens([0, 1]), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 112, 112, 3)
    assert np.allclose(arr, out.images.permute(0, 2, 3, 1).numpy())
    pil = pipe(c, num_inference_steps=3, generator=gens([0, 1]), output_type="pil").images
    assert np.array_equal(np.asarray(pil[1]), to_uint8(out.images)[1])
    assert to_uint8(torch.tensor([[[[0.49 / 255, 1.51 / 255, 1.2]]]])).ravel().tolist() == [0, 2, 255]  # trunc(x 255 + 0.5)
    images, unit = pipe(c, num_inference_steps=3, generator=gens([0, 1]), return_dict=False)
    assert torch.equal(images, out.images) and torch.equal(unit, c)


def test_callback_sees_and_replaces_latents(pipe):
    seen = []

    def record(p, i, t, tensors):
        seen.append((i, t, tensors["latents"].clone()))
        if i == len(seen) - 1 and t == 0:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return None

    out = pipe(ids(1), num_inference_steps=4, generator=gens([0]), output_type="latent", callback_on_step_end=record)
    assert [(i, t) for i, t, _ in seen] == [(0, 750), (1, 500), (2, 250), (3, 0)]
    assert torch.equal(out.images, torch.zeros(1, 3, SIDE, SIDE))
    with pytest.raises(InvalidInputError, match="must return None or a dict"):
        pipe(ids(1), num_inference_steps=2, generator=gens([0]), callback_on_step_end=lambda *a: 3)
    with pytest.raises(InvalidInputError, match="same|shape"):
        pipe(ids(1), num_inference_steps=2, generator=gens([0]),
             callback_on_step_end=lambda *a: {"latents": torch.zeros(2)})


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize(("kw", "match"), [
    (dict(id_embeds=torch.ones(2, 256)), r"\(N, 512\)"),
    (dict(id_embeds=np.ones((2, 3, 512))), "ElasticFace-Arc"),
    (dict(id_embeds=torch.zeros(2, 512)), "zero vectors"),
    (dict(sampler="dpm"), "sampler must be one of"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=1001), "num_inference_steps"),
    (dict(sampler="ddpm", num_inference_steps=50), "all 1000 steps"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(mse_threshold=0.0), "greater than 0"),
    (dict(mse_threshold=-1.0), "mse_threshold"),
    (dict(stage_threshold=1000), "stage_threshold"),
    (dict(stage_threshold=-1), "stage_threshold"),
    (dict(sampler="uiface", num_inference_steps=10, stage_threshold=950), "no stage-1 step"),
    (dict(eta=2.0), "eta"),
    (dict(sampler="ddpm", eta=0.5), "DDIM only"),
    (dict(rng="global"), "rng must be one of"),
    (dict(rng="reference", generator=torch.Generator()), "takes no"),
    (dict(generator=gens([1, 2, 3])), "3 generators for 2 identities"),
    (dict(generator=[1, 2]), "torch.Generator"),
    (dict(output_type="png"), "output_type"),
    (dict(negative_embeds=torch.ones(3, 512)), r"negative_embeds has shape \(3, 512\)"),
    (dict(negative_embeds=torch.ones(2, 128)), "negative_embeds has shape"),
    (dict(sampler="uiface", negative_embeds=torch.ones(512)), "sampler='cfg' or 'ddpm'"),
    (dict(negative_scale=0.5), "no negative_embeds"),
    (dict(negative_embeds=torch.ones(512), negative_scale=0.5, guidance_scale=3.0), "pass only one"),
    (dict(negative_embeds=torch.ones(512), guidance_scale=0.5), "negative weight"),
    (dict(callback_on_step_end="no"), "callback_on_step_end must be a function"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "not available"),
])
def test_refusals_are_one_paragraph(pipe, kw, match):
    args = {"id_embeds": ids(2), **kw}
    before = torch.random.get_rng_state()
    with pytest.raises(InvalidInputError, match=match) as err:
        pipe(**args)
    assert "\n" not in str(err.value)
    assert torch.equal(torch.random.get_rng_state(), before)  # refused before any draw


def test_refuses_a_stock_scheduler():
    from diffusers import DDIMScheduler

    with pytest.raises(InvalidInputError, match="IDiffDDIMScheduler"):
        IDiffFacePipeline(tiny_unet(), tiny_vqmodel(), DDIMScheduler())


def test_scheduler_for_each_sampler(pipe):
    assert isinstance(pipe.scheduler_for("ddpm"), IDiffDDPMScheduler)
    assert pipe.scheduler_for("cfg") is pipe.scheduler and pipe.scheduler_for("uiface") is pipe.scheduler


# ------------------------------------------------------------------ save / load

def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "idiff")
    index = json.loads((tmp_path / "idiff" / "model_index.json").read_text())
    assert index["_class_name"] == "IDiffFacePipeline" and index["latent_size"] == SIDE
    assert sorted(p.name for p in (tmp_path / "idiff").rglob("*.safetensors")) == [
        "diffusion_pytorch_model.safetensors"] * 2
    loaded = IDiffFacePipeline.from_pretrained(tmp_path / "idiff")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, IDiffDDIMScheduler)
    c = ids(1)
    assert torch.equal(latents(loaded, c, [4], sampler="uiface", num_inference_steps=4),
                       latents(pipe, c, [4], sampler="uiface", num_inference_steps=4))
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        IDiffFacePipeline.from_pretrained(tmp_path / "missing")


# ------------------------------------------------------------------ golden values (IDIFF.md)

@pytest.fixture(scope="module")
def golden():
    """The full-size UNet and VQ-f4 with IDIFF.md's deterministic weights, and its identities."""
    from synthface.generators.idiff.testing import full_size_unet, full_size_vqmodel

    pipe = IDiffFacePipeline(full_size_unet(), full_size_vqmodel(), IDiffDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1234)
    torch.randn(2, 3, 32, 32, generator=g)  # IDIFF.md's x, drawn before the identities
    return pipe, F.normalize(torch.randn(2, 512, generator=g), dim=1)


def golden_run(pipe, c, **kw):
    """One call: the written images, and the latents after the last step (seen by a callback)."""
    last = {}

    def keep(p, i, t, tensors):
        last["latents"] = tensors["latents"].clone()

    torch.manual_seed(99)
    out = pipe(c, rng="reference", guidance_scale=2.0, callback_on_step_end=keep, **kw)
    return out, last["latents"]


def assert_golden(out, lat, latent_stats, latent_values, image_stats, image_values, uint8_sum):
    assert float(lat.mean()) == pytest.approx(latent_stats[0], rel=1e-4)
    assert float(lat.std()) == pytest.approx(latent_stats[1], rel=1e-4)
    assert lat[0, :, 16, 16].tolist() == pytest.approx(latent_values, rel=1e-4, abs=1e-4)
    img = out.images
    assert img.shape == (2, 3, 112, 112)
    assert float(img.mean()) == pytest.approx(image_stats[0], rel=1e-4)
    assert float(img.std()) == pytest.approx(image_stats[1], rel=1e-4)
    assert img[0, :, 56, 56].tolist() == pytest.approx(image_values, rel=1e-4, abs=1e-5)
    assert abs(int(to_uint8(img).astype(np.int64).sum()) - uint8_sum) <= 20  # off by 1 on a few pixels


def test_golden_two_stage(golden):
    pipe, c = golden
    out, lat = golden_run(pipe, c, sampler="uiface", num_inference_steps=10, mse_threshold=0.0209,
                          stage_threshold=500)
    assert_golden(out, lat, (-21.540848, 70.655113), [-61.2439, -16.2518, -67.4532], (0.589088, 0.227753),
                  [0.771578, 0.16178, 0.80652], 11306026)
    want = torch.tensor([[0.068595, 0.065932], [0.022226, 0.019486], [0.009659, 0.030063], [0.031859, 0.005565]])
    assert torch.allclose(out.partition_distances, want, atol=2e-6)
    assert out.switched_at.tolist() == [600, 700]  # image 1 at the second comparison, image 0 at the third


def test_golden_plain_cfg(golden):
    pipe, c = golden
    out, lat = golden_run(pipe, c, sampler="cfg", num_inference_steps=4)
    assert_golden(out, lat, (-5.880871, 19.956394), [-17.6515, -8.6388, -16.2998], (0.58915, 0.226784),
                  [0.666548, 0.327559, 0.515322], 11307093)
