"""IDiffUNet: the published names and shapes, the architecture's rules (time embedding, zero inits,
empty context), UIFace's batched two-pass forward against a plain two-call reference, batch
independence, refusals, and IDIFF.md's golden values of one UNet call (full size, deterministic weights).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators.idiff.testing import full_size_unet
from synthface.generators.idiff.tiny import TINY_UNET, tiny_unet
from synthface.generators.idiff.unet import IDiffUNet

# the published names and shapes: shared/data beside the checkout (or beside the folder of worktrees)
SHAPES = Path(__file__).resolve().parents[2] / "data" / "idiff_state_dict.json"  # the published key list, shipped

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def published():
    return json.loads(SHAPES.read_text())


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def inputs(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    c = torch.nn.functional.normalize(torch.randn(batch, 512, generator=g), dim=1)
    return x, c


# ------------------------------------------------------------------ published structure


@pytest.mark.parametrize("learned", [True, False])
def test_state_dict_is_the_published_key_list(published, learned):
    with torch.device("meta"):
        model = IDiffUNet(learn_empty_context=learned)
    expected = [(k, tuple(s)) for k, s, dtype in published["keys"] if learned or k != "empty_context_embedding"]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert {str(v.dtype) for v in model.state_dict().values()} == {"torch.float32"}
    count = sum(p.numel() for p in model.parameters())
    assert count == (published["unet_parameters"] if learned else published["unet_parameters_idiff_face"])
    assert count == (216_341_443 if learned else 216_341_187)
    assert len(expected) == (843 if learned else 842)


def test_published_attention_blocks_heads_and_skip_widths():
    with torch.device("meta"):
        model = IDiffUNet()
    heads = [b.self_attention.to_q.weight.shape[0] // 32 for b in model.attention_blocks()]
    # down.3/4, 6/7, 9/10; middle; up.0-2 (up.2 reduces to 384), up.4-6 (up.6 to 192), up.8-10 (up.10: 96, 3 heads)
    assert heads == [6, 6, 12, 12, 24, 24, 24, 24, 24, 12, 12, 12, 6, 6, 6, 3]
    assert model.up[10].attn.self_attention.head_dim == 32
    assert [m.res.norm1.num_channels for m in model.up if hasattr(m, "res")] == [
        1536, 1536, 1152, 768, 768, 576, 384, 384, 288, 192, 192, 192]
    assert model.up[3].conv.kernel_size == (4, 4) and isinstance(model.up[3].conv, torch.nn.ConvTranspose2d)
    assert model.down[2].conv.stride == (2, 2) and model.downscale == 8


def test_empty_context_of_the_idiff_face_variant_is_a_zero_buffer_outside_the_state_dict():
    model = IDiffUNet(**TINY_UNET, learn_empty_context=False)
    assert "empty_context_embedding" not in model.state_dict()
    assert "empty_context_embedding" in dict(model.named_buffers())
    assert model.empty_context_embedding.tolist() == [0.0] * TINY_UNET["projected_context_dim"]
    assert isinstance(IDiffUNet(**TINY_UNET).empty_context_embedding, torch.nn.Parameter)


def test_a_fresh_model_predicts_zero_because_conv2_x_proj_out_and_final_start_at_zero():
    torch.manual_seed(0)
    model = IDiffUNet(**TINY_UNET)
    zeroed = [n for n, p in model.named_parameters() if not p.any()]
    assert "final.weight" in zeroed and "final.bias" in zeroed
    assert all(any(n.endswith(f"{part}.weight") for n in zeroed) for part in ("res.conv2", "attn.x_proj_out"))
    assert not model.image_proj.weight.eq(0).all()
    x, c = inputs()
    with torch.no_grad():
        assert model(x, 500, c).abs().max().item() == 0.0


def test_time_embedding_is_cos_then_sin_of_48_frequencies(unet):
    with torch.device("meta"):
        full = IDiffUNet()
    assert full.time_emb.lin1.in_features == 96 and full.time_emb.lin2.out_features == 384
    seen = {}
    hook = unet.time_emb.lin1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    try:
        with torch.no_grad():
            unet(inputs()[0], torch.tensor([999, 10]), None)
    finally:
        hook.remove()
    half = TINY_UNET["initial_channels"] // 2
    f = np.exp(-np.log(1e4) * np.arange(half) / half)
    angles = np.array([999.0, 10.0])[:, None] * f[None]
    np.testing.assert_allclose(seen["x"].numpy(), np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=2e-4)


def test_tiny_weights_follow_the_golden_rule_of_idiff_md(unet):
    import zlib

    def z(key, shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))

    state = unet.state_dict()
    assert torch.equal(state["empty_context_embedding"], 0.1 * z("empty_context_embedding", (64,)))
    assert torch.equal(state["down.0.res.norm1.weight"], 1 + 0.1 * z("down.0.res.norm1.weight", (32,)))
    assert torch.equal(state["image_proj.bias"], 0.1 * z("image_proj.bias", (32,)))
    torch.testing.assert_close(state["context_emb.weight"], z("context_emb.weight", (64, 512)) / math.sqrt(512),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(state["image_proj.weight"], z("image_proj.weight", (32, 3, 3, 3)) / math.sqrt(27),
                               rtol=1e-6, atol=0)
    variant = tiny_unet(learn_empty_context=False)
    assert variant.empty_context_embedding.device.type == "cpu" and not variant.empty_context_embedding.any()


# ------------------------------------------------------------------ context and timesteps


def test_integer_zero_d_and_per_row_timesteps_agree_and_the_step_matters(unet):
    x, c = inputs()
    with torch.no_grad():
        a = unet(x, 500, c)
        b = unet(x, torch.tensor(500), c)
        d = unet(x, torch.tensor([500, 500]), c)
        other = unet(x, torch.tensor([500, 20]), c)
    assert torch.equal(a, b) and torch.equal(a, d)
    assert torch.equal(other[0], a[0]) and (other[1] - a[1]).abs().max() > 1e-3


def test_empty_rows_replace_the_projected_context_with_the_empty_embedding(unet):
    x, c = inputs(3)
    with torch.no_grad():
        mixed = unet(x, 700, c, empty=torch.tensor([True, False, True]))
        conditional = unet(x, 700, c)
        unconditional = unet(x, 700, None)
    torch.testing.assert_close(mixed[[0, 2]], unconditional[[0, 2]], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], conditional[1], rtol=0, atol=1e-5)
    assert (conditional - unconditional).abs().max() > 1e-3


def test_zero_empty_context_equals_a_zero_projection():
    """IDiff-Face's empty context is zero in the *projected* space (not a zero 512-d input)."""
    model = tiny_unet(learn_empty_context=False)
    x, c = inputs()
    zeroed = tiny_unet(learn_empty_context=False)
    with torch.no_grad():
        zeroed.context_emb.weight.zero_()
        zeroed.context_emb.bias.zero_()
        torch.testing.assert_close(model(x, 300, None), zeroed(x, 300, c), rtol=0, atol=0)
        assert (model(x, 300, None) - model(x, 300, torch.zeros(2, 512))).abs().max() > 1e-4


def test_batch_independence(unet):
    x, c = inputs(3, seed=5)
    t = torch.tensor([900, 400, 3])
    with torch.no_grad():
        together = unet(x, t, c)
        alone = torch.cat([unet(x[i:i + 1], t[i:i + 1], c[i:i + 1]) for i in range(3)])
        a, b, _ = unet.forward_pair(x, t, c, use_context=torch.tensor([True, False, True]), restandardise=True)
        single = [unet.forward_pair(x[i:i + 1], t[i:i + 1], c[i:i + 1], use_context=torch.tensor([i != 1]),
                                    restandardise=True) for i in range(3)]
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(a, torch.cat([s[0] for s in single]), rtol=0, atol=1e-5)
    torch.testing.assert_close(b, torch.cat([s[1] for s in single]), rtol=0, atol=1e-5)


def test_the_model_runs_in_half_precision_close_to_float32(unet):
    x, c = inputs()
    half = tiny_unet().to(torch.bfloat16)
    with torch.no_grad():
        ref = unet(x, 250, c)
        low = half(x.to(torch.bfloat16), 250, c)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


# ------------------------------------------------------------------ UIFace's two passes


def two_call_reference(model, x, t, c, use_context):
    """UIFace's passes as two plain calls: A records its self logits, B's self-attention uses them."""
    recorded = []
    blocks = model.attention_blocks()
    for block in blocks:
        attn = block.self_attention

        def record(q_in, kv, _f=attn.logits):
            out = _f(q_in, kv)
            recorded.append(out)
            return out

        attn.logits = record
    try:
        eps_a = model(x, t, None)
        replay = iter(list(recorded))
        for block in blocks:
            block.self_attention.logits = lambda q_in, kv, _it=replay: next(_it)
        eps_b = model(x, t, c, empty=~use_context)
    finally:
        for block in blocks:
            del block.self_attention.logits
    return eps_a, eps_b


def test_pass_a_is_the_empty_model_and_unswitched_rows_of_b_follow_it(unet):
    x, c = inputs(3, seed=2)
    with torch.no_grad():
        a, b, cross = unet.forward_pair(x, 600, c, use_context=torch.zeros(3, dtype=torch.bool), restandardise=False)
        empty = unet(x, 600, None)
    assert cross is None
    torch.testing.assert_close(a, empty, rtol=0, atol=1e-5)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_pass_b_uses_pass_a_self_logits_as_a_two_call_reference_does(unet):
    x, c = inputs(3, seed=3)
    use = torch.tensor([True, False, True])
    with torch.no_grad():
        a, b, _ = unet.forward_pair(x, 800, c, use_context=use, restandardise=False)
        ref_a, ref_b = two_call_reference(unet, x, 800, c, use)
        plain = unet(x, 800, c)
    torch.testing.assert_close(a, ref_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(b, ref_b, rtol=0, atol=1e-5)
    assert (b[0] - plain[0]).abs().max() > 1e-4  # the injection changes the conditional pass


def test_cross_logits_are_returned_per_block_and_restandardised_to_the_mean_statistics(unet):
    x, c = inputs(2, seed=4)
    use = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        _, _, raw_a = unet.forward_pair(x, 900, c, use_context=~use, restandardise=False, return_cross=True)
        _, _, raw_b = unet.forward_pair(x, 900, c, use_context=use, restandardise=False, return_cross=True)
        _, b, blended = unet.forward_pair(x, 900, c, use_context=use, restandardise=True, return_cross=True)
        _, b_plain, _ = unet.forward_pair(x, 900, c, use_context=use, restandardise=False)
    blocks = unet.attention_blocks()
    assert len(blended) == len(blocks) == 4  # down.1, middle, up.0 and the reducing up.1
    for logits, block in zip(blended, blocks):
        heads = block.self_attention.to_q.weight.shape[0] // TINY_UNET["head_dim"]
        assert logits.shape[:2] == (2, heads) and logits.shape[3] == TINY_UNET["context_tokens"]
    # the first block's raw logits are the same in every run (its inputs precede any blend)
    first_a, first_b, first = raw_a[0], raw_b[0], blended[0]
    torch.testing.assert_close(first.mean(-1), (first_a.mean(-1) + first_b.mean(-1)) / 2, rtol=0, atol=1e-5)
    torch.testing.assert_close(first.std(-1), (first_a.std(-1) + first_b.std(-1)) / 2, rtol=1e-5, atol=1e-6)
    standard = (first - first.mean(-1, keepdim=True)) / first.std(-1, keepdim=True)
    torch.testing.assert_close(standard, (first_b - first_b.mean(-1, keepdim=True)) / first_b.std(-1, keepdim=True),
                               rtol=1e-4, atol=1e-4)
    assert (b - b_plain).abs().max() > 1e-4


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("width", [256, 128])
def test_a_context_of_the_wrong_width_is_refused_naming_the_embedding(unet, width):
    x, _ = inputs()
    with pytest.raises(InvalidInputError) as err:
        unet(x, 10, torch.randn(2, width))
    message = str(err.value)
    assert "\n" not in message and f"(2, {width})" in message and "(2, 512)" in message
    for phrase in ("512-d", "L2-normalised", "ElasticFace"):
        assert phrase in message
    with pytest.raises(InvalidInputError, match="ElasticFace"):
        unet.forward_pair(x, 10, torch.randn(2, width), use_context=True, restandardise=False)


@pytest.mark.parametrize("shape", [(2, 3, 8), (2, 4, 8, 8), (2, 3, 7, 8)])
def test_a_sample_of_the_wrong_shape_is_refused(unet, shape):
    with pytest.raises(InvalidInputError, match=r"\(batch, 3, height, width\)") as err:
        unet(torch.zeros(shape), 10, None)
    assert "\n" not in str(err.value) and str(tuple(shape)) in str(err.value)


def test_timesteps_and_flags_of_the_wrong_length_are_refused(unet):
    x, c = inputs()
    with pytest.raises(InvalidInputError, match=r"\(2,\) tensor"):
        unet(x, torch.tensor([1, 2, 3]), c)
    with pytest.raises(InvalidInputError, match="use_context"):
        unet.forward_pair(x, 10, c, use_context=torch.ones(3, dtype=torch.bool), restandardise=False)
    with pytest.raises(InvalidInputError, match="empty"):
        unet(x, 10, c, empty=torch.tensor([1, 0]))


def test_save_and_load_pretrained_round_trip(unet, tmp_path):
    unet.save_pretrained(tmp_path / "unet")
    again = IDiffUNet.from_pretrained(tmp_path / "unet")
    x, c = inputs()
    assert again.config.channel_multipliers == list(TINY_UNET["channel_multipliers"])
    with torch.no_grad():
        torch.testing.assert_close(again(x, 42, c), unet(x, 42, c), rtol=0, atol=0)


# ------------------------------------------------------------------ golden values (IDIFF.md, "One UNet call")

# output: (mean, std, abs-sum, min, max, {index: values}), from IDIFF.md
GOLDEN = {
    "eps(c)": (0.34586, 0.61575, 3387.03, -2.54653, 3.25446,
               {(0, 16, 16): (0.988479, 0.441052, 0.051534), (1, 0, 31): (0.107158, 0.109536, 0.158301)}),
    "eps_empty": (0.348974, 0.609842, 3373.156, -2.653, 3.06978, {(0, 16, 16): (0.730592, 0.624369, 0.437133)}),
}


@pytest.fixture(scope="module")
def golden_outputs():
    """The published UNet with the deterministic weights, called once per context on IDIFF.md's inputs."""
    model = full_size_unet()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, 32, 32, generator=g)
    c = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=1)
    t = torch.tensor([999, 10])
    with torch.no_grad():
        return {"eps(c)": model(x, t, c), "eps_empty": model(x, t, None)}


def approx(value: float, rel: float = 1e-4):
    """IDIFF.md's tolerance: ~1e-4 relative to the value (absolute 1e-4 for values below 1), and the
    rounding of the published figure (6 significant digits)."""
    return pytest.approx(value, rel=rel, abs=max(1e-4, 10 ** (math.floor(math.log10(abs(value))) - 5)))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_one_unet_call_matches_the_golden_values(golden_outputs, name):
    eps = golden_outputs[name]
    mean, std, abs_sum, low, high, values = GOLDEN[name]
    assert eps.shape == (2, 3, 32, 32)
    assert eps.mean().item() == approx(mean)
    assert eps.std().item() == approx(std)
    assert eps.abs().sum().item() == approx(abs_sum)
    assert eps.min().item() == approx(low)
    assert eps.max().item() == approx(high)
    for (i, row, col), expected in values.items():
        assert eps[i, :, row, col].tolist() == [approx(v) for v in expected]

