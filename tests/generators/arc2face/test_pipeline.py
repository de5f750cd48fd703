"""Arc2FacePipeline on tiny random components: conditioning, batching, callbacks, dtypes, bad input."""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import pytest
import torch

from synthface.errors import DeviceMemoryError, InvalidInputError
from synthface.generators.arc2face.id_encoder import ARC2FACE_PROMPT, id_token_id
from synthface.generators.arc2face.tiny import TINY_SIZE, tiny_arc2face_pipeline
from synthface.pipelines import Arc2FacePipeline, Arc2FacePipelineOutput

STEPS = 3  # enough for a multistep scheduler to use its history; keeps each call well under a second


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe() -> Arc2FacePipeline:
    return tiny_arc2face_pipeline(seed=0)


def unit_ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=g), dim=1)


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


# ---------------------------------------------------------------- conditioning


def test_id_token_is_one_token_at_position_4(pipe):
    ids = pipe.tokenizer(ARC2FACE_PROMPT).input_ids
    assert ids[4] == id_token_id(pipe.tokenizer)
    assert ids.count(ids[4]) == 1


def test_encode_identity_matches_stock_encoder_with_replaced_embedding_row(pipe):
    """Independent computation: per identity, a copy of the stock CLIPTextModel whose `id` row of
    the token-embedding table is the padded ID vector, run on the plain prompt."""
    ids = unit_ids(3)
    got = pipe.encode_identity(ids)
    assert got.shape == (3, 77, 512)
    token = id_token_id(pipe.tokenizer)
    input_ids = pipe.tokenizer(ARC2FACE_PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    for i in range(3):
        model = copy.deepcopy(pipe.text_encoder)
        with torch.no_grad():
            model.get_input_embeddings().weight[token] = ids[i]  # 512 == hidden size of the tiny encoder
            want = model(input_ids).last_hidden_state[0]
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    # The substitution is scoped: the pipeline's encoder on the plain prompt is unchanged afterwards.
    with torch.no_grad():
        plain = pipe.text_encoder(input_ids).last_hidden_state
    assert not torch.allclose(plain[0], got[0], atol=1e-3)


def test_encode_identity_zero_pads_narrower_vectors():
    """A D < hidden vector fills the first D entries of the row and zeros the rest."""
    small = tiny_arc2face_pipeline(seed=1)
    small.register_to_config(id_dim=256)
    v = torch.nn.functional.normalize(torch.randn(1, 256), dim=1)
    padded = torch.cat([v, torch.zeros(1, 256)], dim=1)
    full = tiny_arc2face_pipeline(seed=1)
    torch.testing.assert_close(small.encode_identity(v), full.encode_identity(padded), atol=1e-6, rtol=0)


def test_unconditional_branch_is_the_empty_prompt(pipe):
    empty = pipe.tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = pipe.text_encoder(empty).last_hidden_state
    torch.testing.assert_close(pipe.encode_unconditional(1), want)


# ---------------------------------------------------------------- generation


def test_output_order_shape_and_types(pipe):
    out = pipe(unit_ids(2), num_images_per_prompt=3, num_inference_steps=STEPS, generator=gens(range(6)), output_type="np")
    assert isinstance(out, Arc2FacePipelineOutput)
    assert out.images.shape == (6, TINY_SIZE, TINY_SIZE, 3)
    assert out.images.min() >= 0 and out.images.max() <= 1
    torch.testing.assert_close(out.id_embeds, unit_ids(2))
    pil = pipe(unit_ids(1), num_inference_steps=1, generator=gens([0])).images
    assert len(pil) == 1 and pil[0].size == (TINY_SIZE, TINY_SIZE)
    pt = pipe(unit_ids(1), num_inference_steps=1, generator=gens([0]), output_type="pt", height=16, width=24).images
    assert pt.shape == (1, 3, 16, 24)


def test_batched_equals_one_identity_at_a_time(pipe):
    """Each image depends only on its identity and its own generator, not on its batch-mates.

    Tolerance: 1e-4 absolute on [0, 1] pixels (batched BLAS kernels may sum in another order)."""
    ids = unit_ids(3, seed=5)
    k = 2
    seeds = [[100 + 10 * i + j for j in range(k)] for i in range(3)]
    flat = [s for row in seeds for s in row]
    batched = pipe(ids, num_images_per_prompt=k, num_inference_steps=STEPS, generator=gens(flat), output_type="np").images
    single = np.concatenate([
        pipe(ids[i], num_images_per_prompt=k, num_inference_steps=STEPS, generator=gens(seeds[i]), output_type="np").images
        for i in range(3)
    ])
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)
    # Identity-major order, and the identity and the seed both matter.
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # same identity, other seed
    other_id = pipe(ids[1], num_inference_steps=STEPS, generator=gens([flat[0]]), output_type="np").images
    assert np.abs(batched[0] - other_id[0]).max() > 1e-3  # same seed, other identity


def test_same_generator_seeds_reproduce(pipe):
    a = pipe(unit_ids(1), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7), output_type="np").images
    b = pipe(unit_ids(1), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_callback_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        assert p is pipe
        seen.append((i, int(t), tuple(kwargs["latents"].shape), tuple(kwargs["prompt_embeds"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 4 else {}

    out = pipe(unit_ids(2), num_images_per_prompt=2, num_inference_steps=5, generator=gens(range(4)), output_type="latent",
               callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s[0] for s in seen] == list(range(5))
    assert [s[1] for s in seen] == [int(t) for t in pipe.scheduler.timesteps]
    assert seen[0][2] == (4, 4, TINY_SIZE // 2, TINY_SIZE // 2) and seen[0][3] == (4, 77, 512)
    assert torch.count_nonzero(out.images) == 0  # the last step's replacement is what came out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype):
    half = tiny_arc2face_pipeline().to(dtype=dtype)
    ref = tiny_arc2face_pipeline()
    a = half(unit_ids(2), num_inference_steps=2, generator=gens([1, 2]), output_type="np").images
    b = ref(unit_ids(2), num_inference_steps=2, generator=gens([1, 2]), output_type="np").images
    assert half.unet.dtype == dtype and np.isfinite(a).all()
    assert np.abs(a - b).max() < 0.1  # same seeds start from the same noise in every dtype


def test_no_guidance_runs_a_single_branch(pipe, monkeypatch):
    batches = []
    original = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or original(x, *a, **k))
    pipe(unit_ids(2), num_inference_steps=2, guidance_scale=1.0, generator=gens([0, 1]), output_type="latent")
    pipe(unit_ids(2), num_inference_steps=2, guidance_scale=3.0, generator=gens([0, 1]), output_type="latent")
    assert batches == [2, 2, 4, 4]


def test_lcm_scheduler_few_steps_with_per_image_generators():
    lcm = tiny_arc2face_pipeline().use_lcm()
    ids = unit_ids(2)
    batched = lcm(ids, num_inference_steps=2, guidance_scale=1.0, generator=gens([3, 4]), output_type="np").images
    single = np.concatenate([lcm(ids[i], num_inference_steps=2, guidance_scale=1.0, generator=gens([3 + i]), output_type="np").images
                             for i in range(2)])
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)  # LCM's per-step noise is per image too


def test_optimize_options_on_cpu():
    p = tiny_arc2face_pipeline().optimize(attention="sdpa", vae_slicing=True)
    assert p.vae.use_slicing
    out = p(unit_ids(3), num_inference_steps=1, generator=gens(range(3)), output_type="np").images
    assert out.shape[0] == 3
    with pytest.raises(InvalidInputError, match="CUDA"):
        p.optimize(offload="model")
    with pytest.raises(InvalidInputError, match="attention"):
        p.optimize(attention="flash9")


def test_tiny_generate_is_fast(pipe):
    pipe(unit_ids(1), num_inference_steps=1, output_type="np")  # warm-up
    start = time.perf_counter()
    pipe(unit_ids(2), num_images_per_prompt=2, num_inference_steps=4, generator=gens(range(4)), output_type="pil")
    assert time.perf_counter() - start < 5.0  # about 0.5 s on an idle core; generous for a shared machine


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(2, 128), r"expected \(N, 512\)"),
        (torch.randn(2, 3, 512), r"expected \(N, 512\)"),
        (torch.zeros(0, 512), "empty"),
        (torch.full((2, 512), float("nan")), "NaN or inf"),
        (torch.cat([unit_ids(1), torch.full((1, 512), float("inf"))]), r"rows \[1\].*NaN or inf"),
        (torch.cat([unit_ids(1), torch.zeros(1, 512)]), r"rows \[1\] are zero"),
        ("not a tensor", "torch.Tensor or numpy"),
    ],
)
def test_bad_id_vectors_raise_readable_errors(pipe, bad, match):
    with pytest.raises(InvalidInputError, match=match):
        pipe(bad, num_inference_steps=1)
    with pytest.raises(InvalidInputError, match=match):
        pipe.encode_identity(bad)


def test_unnormalised_vectors_are_normalised_with_a_warning(pipe):
    raw = unit_ids(2) * 23.0  # ArcFace's raw embeddings have norms around 20-25
    with pytest.warns(UserWarning, match="not unit-norm"):
        out = pipe(raw.numpy().astype(np.float64), num_inference_steps=STEPS, generator=gens([0, 1]), output_type="np")
    ref = pipe(unit_ids(2), num_inference_steps=STEPS, generator=gens([0, 1]), output_type="np")
    np.testing.assert_allclose(out.images, ref.images, atol=1e-5)
    torch.testing.assert_close(out.id_embeds, unit_ids(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.encode_identity(unit_ids(2))  # unit vectors: no warning


def test_bad_call_arguments(pipe):
    with pytest.raises(InvalidInputError, match="one generator per output image"):
        pipe(unit_ids(2), num_images_per_prompt=2, generator=gens(range(3)))
    with pytest.raises(InvalidInputError, match="multiple of 2"):
        pipe(unit_ids(1), height=33)
    with pytest.raises(InvalidInputError, match="output_type"):
        pipe(unit_ids(1), output_type="jpeg")
    with pytest.raises(InvalidInputError, match="num_images_per_prompt"):
        pipe(unit_ids(1), num_images_per_prompt=0)
    with pytest.raises(InvalidInputError, match="not available"):
        pipe(unit_ids(1), callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])


def test_cuda_out_of_memory_becomes_a_batch_size_message(monkeypatch):
    p = tiny_arc2face_pipeline()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(p.unet, "forward", oom)
    with pytest.raises(DeviceMemoryError, match=r"8 images of 32x32.*batch of 4 or less") as info:
        p(unit_ids(4), num_images_per_prompt=2, num_inference_steps=2)
    assert info.value.exit_code == 7 and "Tried to allocate" in str(info.value)


# ---------------------------------------------------------------- LCM-LoRA, full size, compile


def test_lcm_lora_loads_fuses_and_matches_the_unfused_adapter(tmp_path):
    """A LoRA saved in the diffusers format (as lcm-lora-sdv1-5 is) loads through use_lcm and,
    fused, renders what the same adapter does unfused."""
    pytest.importorskip("peft")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    with_adapter = tiny_arc2face_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        with_adapter.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    Arc2FacePipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(with_adapter.unet))
    )
    with_adapter.use_lcm()
    fused = tiny_arc2face_pipeline().use_lcm(str(tmp_path / "lora"))
    plain = tiny_arc2face_pipeline().use_lcm()
    assert type(fused.scheduler).__name__ == "LCMScheduler"
    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, output_type="np")
    want = with_adapter(unit_ids(2), generator=gens([0, 1]), **kwargs).images
    got = fused(unit_ids(2), generator=gens([0, 1]), **kwargs).images
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - plain(unit_ids(2), generator=gens([0, 1]), **kwargs).images).max() > 1e-3


def test_full_size_components_match_stable_diffusion_1_5():
    from synthface.generators.arc2face.testing import full_size_arc2face_pipeline

    big = full_size_arc2face_pipeline(device="meta")

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(big.unet) == 859_520_964 and count(big.vae) == 83_653_863 and count(big.text_encoder) == 123_060_480
    assert big.vae_scale_factor == 8 and big.unet.config.sample_size * big.vae_scale_factor == 512
    assert big.unet.config.cross_attention_dim == big.text_encoder.config.hidden_size == 768


@pytest.mark.slow
def test_compiled_unet_renders_the_same(pipe):
    compiled = tiny_arc2face_pipeline().optimize(compile=True)
    a = compiled(unit_ids(2), num_inference_steps=2, generator=gens([0, 1]), output_type="np").images
    b = pipe(unit_ids(2), num_inference_steps=2, generator=gens([0, 1]), output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_measure_throughput_reports_rows_per_batch_size(pipe):
    from synthface.generators.arc2face.testing import measure_throughput

    rows = measure_throughput(pipe, (1, 2), steps=1, repeats=1)
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["peak_gib"] is None for r in rows)  # no GPU memory on CPU
