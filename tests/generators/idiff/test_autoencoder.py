"""The VQ-f4 first stage as a diffusers VQModel: the published LDM key lists renamed load strictly
(90 + 115 tensors), the renames round-trip, quantisation equals a brute-force nearest code (first index
on ties), decoding, refusals, and IDIFF.md's "Decoder alone" golden values (full size, deterministic weights).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from synthface.errors import FileFormatError, InvalidInputError
from synthface.generators.idiff import autoencoder
from synthface.generators.idiff.autoencoder import decode_latents, idiff_vqmodel, quantise
from synthface.generators.idiff.testing import full_size_vqmodel
from synthface.generators.idiff.tiny import TINY_VQ, tiny_vqmodel

# the published names and shapes: shared/data beside the checkout (or beside the folder of worktrees)
SHAPES = Path(__file__).resolve().parents[2] / "data" / "idiff_state_dict.json"  # the published key list, shipped


@pytest.fixture(scope="module")
def published():
    return json.loads(SHAPES.read_text())


@pytest.fixture(scope="module")
def vq():
    return tiny_vqmodel()


def meta_state(keys) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s, _ in keys}


# ------------------------------------------------------------------ names


def test_config_is_vq_f4_without_a_scale_factor():
    with torch.device("meta"):
        model = idiff_vqmodel()
    assert model.config.scaling_factor == 1.0 and autoencoder.VQ_CONFIG["scaling_factor"] == 1.0
    assert model.config.num_vq_embeddings == 8192 and model.config.vq_embed_dim == 3
    assert list(model.config.block_out_channels) == [128, 256, 512] and model.config.layers_per_block == 2
    assert idiff_vqmodel(**TINY_VQ).config.num_vq_embeddings == 16


@pytest.mark.parametrize("part, count, tensors", [("vq_encoder", 22_337_423, 90), ("vq_decoder", 32_985_359, 115)])
def test_each_published_file_renamed_fits_vqmodel(published, part, count, tensors):
    with torch.device("meta"):
        model = idiff_vqmodel()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    renamed = autoencoder.vq_state_from_ldm(meta_state(published[part]["keys"]))
    assert len(renamed) == tensors and sum(v.numel() for v in renamed.values()) == count == published[part]["parameters"]
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: s for k, s in expected.items() if k in renamed}
    owner = ("encoder.", "quant_conv.") if part == "vq_encoder" else ("decoder.", "quantize.", "post_quant_conv.")
    assert sorted(renamed) == sorted(k for k in expected if k.startswith(owner))


def test_both_published_files_renamed_load_strictly(published):
    with torch.device("meta"):
        model = idiff_vqmodel()
    both = {**meta_state(published["vq_encoder"]["keys"]), **meta_state(published["vq_decoder"]["keys"])}
    result = model.load_state_dict(autoencoder.vq_state_from_ldm(both), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model.decoder.mid_block.attentions[0].to_q.weight.shape == (512, 512)


def test_renames_round_trip_names_order_shapes_and_values(published, vq):
    both = [*published["vq_encoder"]["keys"], *published["vq_decoder"]["keys"]]
    back = autoencoder.vq_state_to_ldm(autoencoder.vq_state_from_ldm(meta_state(both)))
    assert [(k, list(v.shape)) for k, v in back.items()] == [(k, s) for k, s, _ in both]
    state = vq.state_dict()
    again = autoencoder.vq_state_from_ldm(autoencoder.vq_state_to_ldm(state))
    assert list(again) == list(state) and all(torch.equal(again[k], state[k]) for k in state)


def test_the_mid_attention_1x1_convs_become_linear_weights():
    conv = torch.randn(512, 512, 1, 1)
    renamed = autoencoder.vq_state_from_ldm({"decoder.mid.attn_1.q.weight": conv, "decoder.mid.attn_1.proj_out.bias": conv[:, 0, 0, 0],
                                 "decoder.up.2.upsample.conv.weight": torch.zeros(1, 1, 3, 3),
                                 "decoder.up.0.block.0.nin_shortcut.weight": torch.zeros(1, 1, 1, 1)})
    assert torch.equal(renamed["decoder.mid_block.attentions.0.to_q.weight"], conv[:, :, 0, 0])
    assert "decoder.mid_block.attentions.0.to_out.0.bias" in renamed
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in renamed  # up.L -> up_blocks.(levels - 1 - L)
    assert "decoder.up_blocks.2.resnets.0.conv_shortcut.weight" in renamed


def test_unknown_keys_are_listed_in_a_file_format_error():
    with pytest.raises(FileFormatError) as err:
        autoencoder.vq_state_from_ldm({"first_stage_model.decoder.conv_in.weight": torch.zeros(1), "decoder.conv_in.bias": torch.zeros(1),
                           "decoder.mid.attn_2.q.weight": torch.zeros(1)})
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 entries")
    assert "first_stage_model.decoder.conv_in.weight" in message and "decoder.mid.attn_2.q.weight" in message
    with pytest.raises(FileFormatError, match="decoder.up.0.block.0.norm1.weight"):
        autoencoder.vq_state_to_ldm({"decoder.up.0.block.0.norm1.weight": torch.zeros(1)})


# ------------------------------------------------------------------ quantisation and decoding


def brute_force_codes(latents: torch.Tensor, codes: torch.Tensor) -> list[int]:
    """Exact (rational) |z|^2 + |e|^2 - 2 z.e per pixel, the first code index of the minimum."""
    book = [[Fraction(v) for v in code] for code in codes.tolist()]
    out = []
    for z in latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).tolist():
        zf = [Fraction(v) for v in z]
        d = [sum(a * a for a in zf) + sum(e * e for e in code) - 2 * sum(a * e for a, e in zip(zf, code)) for code in book]
        out.append(d.index(min(d)))
    return out


def test_quantisation_is_the_nearest_code_with_the_first_index_on_ties():
    model = tiny_vqmodel()
    g = torch.Generator().manual_seed(3)
    # quarter-integers: every distance is exact in float32, so ties are real ties
    codes = torch.randint(-4, 5, (16, 3), generator=g).float() / 4
    codes[9] = codes[2]  # duplicate codes: always a tie, index 2 must win
    codes[13] = codes[5]
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(codes)
    latents = torch.randint(-6, 7, (3, 3, 4, 4), generator=g).float() / 4
    latents[0, :, 0, 0] = codes[9]
    latents[1, :, 2, 3] = (codes[0] + codes[1]) / 2  # equidistant from codes 0 and 1 (and perhaps others)
    quantised, indices = quantise(model, latents)
    expected = brute_force_codes(latents, codes)
    assert indices.flatten().tolist() == expected
    assert indices[0, 0, 0].item() == 2 and 9 not in expected and 13 not in expected
    assert torch.equal(quantised, codes[indices].permute(0, 3, 1, 2))


def test_quantisation_of_random_latents_matches_float64_and_diffusers(vq):
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    quantised, indices = quantise(vq, latents)
    codes = vq.quantize.embedding.weight.double()
    flat = latents.double().permute(0, 2, 3, 1).reshape(-1, 3)
    assert indices.flatten().tolist() == ((flat[:, None] - codes[None]) ** 2).sum(-1).argmin(1).tolist()
    _, _, (_, _, theirs) = vq.quantize(latents)
    assert indices.flatten().tolist() == theirs.tolist()
    # straight-through: z + (e - z), which may differ from e by one rounding
    torch.testing.assert_close(quantised, vq.quantize.embedding.weight[indices].permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_decode_latents_is_quantise_post_quant_conv_decoder_and_batch_independent(vq):
    latents = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        images = decode_latents(vq, latents)
        theirs = vq.decode(latents).sample
        alone = torch.cat([decode_latents(vq, latents[i:i + 1]) for i in range(3)])
        unquantised = vq.decode(latents, force_not_quantize=True).sample
    assert images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(images, alone, rtol=0, atol=1e-5)
    assert (images - unquantised).abs().max() > 1e-3  # the quantisation is not skipped


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 8, 8)])
def test_latents_of_the_wrong_shape_are_refused(vq, shape):
    with pytest.raises(InvalidInputError, match=r"\(batch, 3, height, width\)") as err:
        decode_latents(vq, torch.zeros(shape))
    assert "\n" not in str(err.value) and str(tuple(shape)) in str(err.value)


# ------------------------------------------------------------------ golden values (IDIFF.md, "Decoder alone")


@pytest.fixture(scope="module")
def golden_images():
    """The published first stage with the deterministic weights (by LDM name) decoding IDIFF.md's latents."""
    model = full_size_vqmodel()
    z = 0.7 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return decode_latents(model, z)


def approx(value: float, rel: float = 1e-4):
    """IDIFF.md's tolerance: ~1e-4 relative to the value (absolute 1e-4 for values below 1)."""
    return pytest.approx(value, rel=rel, abs=max(1e-4, 10 ** (math.floor(math.log10(abs(value))) - 5)))


def test_decoder_alone_matches_the_golden_values(golden_images):
    images = golden_images
    assert images.shape == (2, 3, 128, 128)
    assert images.mean().item() == approx(0.186702)
    assert images.std().item() == approx(0.535299)
    assert images.abs().sum().item() == approx(43802.379)
    assert images.min().item() == approx(-2.33472)
    assert images.max().item() == approx(2.88088)
