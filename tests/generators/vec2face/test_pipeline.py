"""Vec2FacePipeline on the tiny model: mask spec, RNG modes, outputs, pose control, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.faces.align import ARCFACE_TEMPLATE
from synthface.generators.vec2face.landmarks import DOT_COLOURS, draw_landmarks, project_points, render_pose_landmarks
from synthface.generators.vec2face.model import masks_from_noise, token_count
from synthface.generators.vec2face.pipeline import to_uint8
from synthface.pipelines import MASK_PRESETS, MaskRatio, load_vec2face

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_vec2face("vec2face-tiny")


@pytest.fixture(scope="module")
def plus():
    return load_vec2face("vec2face-plus-tiny")


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)), dim=1)


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def decoder_input(pipe, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input, decoder input minus its position embedding) of one pipeline call."""
    seen = {}
    hooks = [pipe.vec2face.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("enc", a[0])),
             pipe.vec2face.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("dec", a[0]))]
    try:
        pipe(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen["enc"], seen["dec"] - pipe.vec2face.decoder_pos_embed_learned


# ------------------------------------------------------------------ mask spec


def test_mask_counts_follow_the_spec(pipe):
    ratio = MASK_PRESETS["scripts"]
    rates, mask, drop = pipe.draw_masks(256, ratio, gens(range(256)), "per_image", "cpu")
    assert bool(((rates >= ratio.min) & (rates <= ratio.max)).all())
    assert drop.sum(1).tolist() == [math.ceil(49 * 0.1)] * 256  # nd = 5 always
    assert mask.sum(1).tolist() == [math.ceil(49 * float(r)) for r in rates]
    assert bool((mask | ~drop).all())  # drop is a subset of mask
    assert 5 <= int(mask.sum(1).min()) and int(mask.sum(1).max()) <= 49
    # the rates follow the truncated normal: median ~0.26 (of N(0.15, 0.25) on [0.1, 1]), ~14 tokens
    assert 0.2 < float(rates.median()) < 0.33 and 11 <= int(mask.sum(1).median()) <= 17


def test_masks_pick_the_smallest_noise_values():
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [0.2, 0.8, 0.4, 0.6, 0.0]])
    mask, drop = masks_from_noise(noise, torch.tensor([3, 2]), 1)
    assert mask.tolist() == [[True, True, False, True, False], [True, False, False, False, True]]
    assert drop.tolist() == [[False, True, False, False, False], [False, False, False, False, True]]
    assert token_count(0.3, 49) == 15 and token_count(0.1, 49) == 5 and token_count(1.0, 49) == 49


def test_encoder_sees_position_zero_and_the_undropped_tokens(pipe):
    enc, dec = decoder_input(pipe, ids(2), generator=gens([1, 2]), mask_ratio="pose", output_type="pt")
    assert enc.shape[1] == 50 - math.ceil(49 * 0.8)  # f + the 9 tokens never dropped
    # masked positions hold token 0 (the encoded f), the unmasked ones differ from it
    rates, mask, _ = pipe.draw_masks(2, MASK_PRESETS["pose"], gens([1, 2]), "per_image", "cpu")
    for row in range(2):
        same = torch.isclose(dec[row, 1:], dec[row, :1], atol=1e-6).all(dim=1)
        assert same.tolist() == mask[row].tolist()


def test_rate_one_puts_token_zero_everywhere(pipe):
    _, dec = decoder_input(pipe, ids(2), generator=gens([3, 4]), mask_ratio=MaskRatio(0.1, 1.0, 1.0, 0.0),
                           output_type="pt")
    assert torch.allclose(dec, dec[:, :1].expand_as(dec), atol=1e-6)


# ------------------------------------------------------------------ randomness


def test_per_image_mode_is_batch_independent(pipe):
    vectors = ids(3)
    batch = pipe(vectors, 2, generator=gens([10, 11, 12, 13, 14, 15]), output_type="pt")
    for i, seed in enumerate([10, 11, 12, 13, 14, 15]):
        alone = pipe(vectors[i // 2], generator=gens([seed]), output_type="pt")
        assert torch.allclose(batch.images[i], alone.images[0], atol=1e-4)  # GEMM rounding only
        assert batch.mask_rates[i] == alone.mask_rates[0]
    # reordered batch-mates: same images
    swapped = pipe(vectors[[2, 0]], 2, generator=gens([14, 15, 10, 11]), output_type="pt")
    assert torch.allclose(swapped.images[2:], batch.images[:2], atol=1e-4)
    # a different seed changes the image
    other = pipe(vectors[0], generator=gens([99]), output_type="pt")
    assert (other.images[0] - batch.images[0]).abs().max() > 0.01


def test_reference_mode_replays_the_published_draws(pipe):
    pytest.importorskip("scipy")
    from scipy import stats

    vectors = ids(3)
    np.random.seed(5)
    torch.manual_seed(5)
    out = pipe(vectors, rng="reference", output_type="pt")
    # by hand: one truncated-normal rate for the batch (numpy's global state), then torch.rand(B, 49)
    np.random.seed(5)
    torch.manual_seed(5)
    rate = float(stats.truncnorm((0.1 - 0.15) / 0.25, (1.0 - 0.15) / 0.25, loc=0.15, scale=0.25).rvs(1)[0])
    noise = torch.rand(3, 49)
    mask, drop = masks_from_noise(noise, torch.full((3,), math.ceil(49 * rate)), 5)
    with torch.no_grad():
        raw = pipe.vec2face(out.id_embeds * 22, mask, drop)
    assert out.mask_rates.tolist() == [rate] * 3
    assert torch.allclose(out.images, ((raw + 1) / 2).clamp(0, 1), atol=1e-6)
    # batch-dependent as documented: identity 1 at position 1 of a batch uses noise values 49..97;
    # alone, at position 0, it uses values 0..48 and comes out differently
    np.random.seed(5)
    torch.manual_seed(5)
    alone = pipe(vectors[1], rng="reference", output_type="pt")
    assert (alone.images[0] - out.images[1]).abs().max() > 0.01
    np.random.seed(5)
    torch.manual_seed(5)
    assert torch.equal(pipe(vectors, rng="reference", output_type="pt").images, out.images)


# ------------------------------------------------------------------ outputs


def test_output_types_agree(pipe):
    vectors = ids(2)
    pt = pipe(vectors, generator=gens([1, 2]), output_type="pt").images
    arr = pipe(vectors, generator=gens([1, 2]), output_type="np").images
    pil = pipe(vectors, generator=gens([1, 2]), output_type="pil").images
    assert pt.shape == (2, 3, 112, 112) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert arr.shape == (2, 112, 112, 3) and np.array_equal(arr, pt.permute(0, 2, 3, 1).numpy())
    assert [im.size for im in pil] == [(112, 112)] * 2 and pil[0].mode == "RGB"
    # PIL holds the scripts' truncation of ((x + 1) / 2 * 255): at most one level below pt * 255
    levels = np.stack([np.asarray(im) for im in pil]).astype(np.float64)
    diff = pt.permute(0, 2, 3, 1).double().numpy() * 255 - levels
    assert diff.min() > -1e-3 and diff.max() < 1 + 1e-3


def test_to_uint8_truncates_like_the_scripts():
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 0, 127, 254, 255, 255]


def test_identity_norm_scales_the_input(pipe):
    seen = []
    hook = pipe.vec2face.latent_prior_proj_f.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with pytest.warns(UserWarning, match="not unit-norm"):
            pipe(ids(2) * 3.0, generator=gens([1, 2]), identity_norm=21.5, output_type="pt")
    finally:
        hook.remove()
    assert seen[0].norm(dim=1).tolist() == pytest.approx([21.5, 21.5], rel=1e-6)


# ------------------------------------------------------------------ Vec2Face+


def test_pose_condition_changes_the_images_and_poses_equal_their_landmarks(plus):
    vectors = ids(1)
    poses = [(0.0, 0.0), (45.0, 0.0), (-45.0, 15.0)]
    by_pose = plus(vectors, 3, generator=gens([1, 2, 3]), poses=poses, output_type="pt")
    drawn = plus(vectors, 3, generator=gens([1, 2, 3]), landmarks=render_pose_landmarks(poses), output_type="pt")
    assert torch.equal(by_pose.images, drawn.images)
    assert bool((by_pose.mask_rates >= 0.8).all() and (by_pose.mask_rates <= 0.9).all())  # the "pose" preset
    turned = plus(vectors, 3, generator=gens([1, 2, 3]), poses=[(0.0, 0.0)] * 3, output_type="pt")
    assert torch.allclose(turned.images[0], by_pose.images[0], atol=1e-6)
    assert (turned.images[1] - by_pose.images[1]).abs().max() > 1e-3
    uint8 = np.stack([draw_landmarks(project_points(*p)) for p in poses])
    assert torch.equal(plus(vectors, 3, generator=gens([1, 2, 3]), landmarks=uint8, output_type="pt").images,
                       by_pose.images)


def test_merged_lora_renders_the_same_images():
    kept = load_vec2face("vec2face-plus-tiny")
    merged = load_vec2face("vec2face-plus-tiny", merge_lora=True)
    assert any(k.endswith("qkv.A") for k in kept.vec2face.state_dict())
    assert not any(k.endswith(".A") for k in merged.vec2face.state_dict())
    def render(pipe):
        return pipe(ids(2), generator=gens([4, 5]), poses=[(10.0, 0.0), (-20.0, 5.0)], output_type="pt").images

    a = render(kept)
    assert torch.allclose(a, render(merged), atol=1e-4)
    # the adapters matter: zeroing B changes the output
    with torch.no_grad():
        for block in kept.vec2face.attention_blocks():
            block.attn.qkv.B.zero_()
    assert (render(kept) - a).abs().max() > 1e-3


def test_landmark_renderer_draws_the_template_at_frontal_pose():
    points = project_points(0.0, 0.0)
    assert np.allclose(points, ARCFACE_TEMPLATE, atol=1e-4)
    image = draw_landmarks(points)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    for (x, y), colour in zip(points, DOT_COLOURS):
        assert tuple(image[round(y), round(x)]) == colour
    assert image[0, 0].tolist() == [0, 0, 0] and (image.any(axis=2).sum()) == pytest.approx(5 * math.pi * 9, rel=0.25)
    # yaw turns the nose tip right of the eyes' midpoint, pitch moves it up
    right = project_points(40.0, 0.0)
    assert right[2, 0] - right[:2, 0].mean() > ARCFACE_TEMPLATE[2, 0] - ARCFACE_TEMPLATE[:2, 0].mean() + 5
    up = project_points(0.0, 30.0)
    assert up[2, 1] - up[:2, 1].mean() < ARCFACE_TEMPLATE[2, 1] - ARCFACE_TEMPLATE[:2, 1].mean() - 3
    tensor = render_pose_landmarks([(0.0, 0.0)])
    assert tensor.shape == (1, 3, 112, 112) and tensor.min() == -1 and tensor.max() == 1


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(id_embeds=torch.full((1, 512), float("nan"))), "NaN or inf"),
        (dict(id_embeds=torch.tensor([[float("inf")] + [0.0] * 511])), "NaN or inf"),
        (dict(id_embeds=torch.zeros(1, 512)), "zero vectors"),
        (dict(id_embeds=torch.ones(1, 128)), "expected (N, 512)"),
        (dict(identity_norm=float("nan")), "identity_norm"),
        (dict(identity_norm=0.0), "identity_norm"),
        (dict(identity_norm=float("inf")), "identity_norm"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(num_images_per_prompt=True), "num_images_per_prompt"),
        (dict(generator=gens([1, 2])), "one generator per output image"),
        (dict(generator=[1]), "torch.Generator"),
        (dict(rng="global"), "rng must be"),
        (dict(rng="reference", generator=gens([1])), "takes no generator"),
        (dict(mask_ratio="fast"), "preset must be"),
        (dict(mask_ratio=MaskRatio(0.5, 0.2, 0.3, 0.1)), "min <= mu <= max"),
        (dict(mask_ratio=MaskRatio(0.1, 0.5, float("nan"), 0.1)), "finite"),
        (dict(output_type="latent"), "output_type"),
        (dict(poses=[(0.0, 0.0)]), "no pose model"),
    ],
)
def test_bad_arguments_are_refused(pipe, kwargs, words):
    with pytest.raises(InvalidInputError) as err:
        pipe(**{"id_embeds": ids(1), **kwargs})
    assert words in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(landmarks=np.zeros((1, 64, 64, 3), np.uint8)), "(B, 112, 112, 3)"),
        (dict(landmarks=np.zeros((1, 112, 112, 3), np.float64)), "uint8"),
        (dict(landmarks=torch.zeros(1, 3, 96, 96)), "(B, 3, 112, 112)"),
        (dict(landmarks=torch.full((1, 3, 112, 112), float("nan"))), "finite and in [-1, 1]"),
        (dict(landmarks=torch.zeros(2, 3, 112, 112)), "2 pose conditions for 1"),
        (dict(poses=[(120.0, 0.0)]), "yaw"),
        (dict(poses=[(0.0, float("nan"))]), "pitch"),
        (dict(poses=[0.0, 0.0]), "(B, 2)"),
        (dict(poses=[(0.0, 0.0)], landmarks=torch.zeros(1, 3, 112, 112)), "not both"),
    ],
)
def test_bad_pose_conditions_are_refused(plus, kwargs, words):
    with pytest.raises(InvalidInputError) as err:
        plus(ids(1), **kwargs)
    assert words in str(err.value)


def test_benchmark_script_measures_both_paths(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_vec2face.py"
    spec = importlib.util.spec_from_file_location("bench_vec2face", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny", "--batch", "2", "--precision", "fp32", "--repeats", "1", "--out",
                         str(tmp_path / "b.json")])
    (row,) = result["rows"]
    assert row["batch"] == 2 and row["pipeline_images_per_s"] > 0 and row["model_images_per_s"] > 0
    assert row["pipeline_over_model"] == pytest.approx(row["pipeline_images_per_s"] / row["model_images_per_s"])
    assert json.loads((tmp_path / "b.json").read_text()) == result
