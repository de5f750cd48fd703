"""Margin heads: closed-form logits, the straight-through and exact gradients, class-centre sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthface.errors import InvalidInputError
from synthface.fr.heads import AdaFaceHead, MarginHead, cosine_matrix, margin_logits, sample_classes
from tests.helpers.adaface import reference_adaface

COS = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.9, 0.0], [-0.95, 0.1, 0.95], [0.99, -1.0, 0.4]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 0, 2])


def test_arcface_logits_equal_the_closed_form():
    out = margin_logits(COS, LABELS, scale=64.0, arc_margin=0.5)
    expected = 64.0 * COS.clone()
    for i, y in enumerate(LABELS.tolist()):
        expected[i, y] = 64.0 * math.cos(math.acos(COS[i, y].item()) + 0.5)
    torch.testing.assert_close(out, expected)
    # no easy-margin branch: theta + m > pi (row 2: theta = arccos(-0.95) = 2.82) keeps cos(theta + m)
    assert math.acos(-0.95) + 0.5 > math.pi
    assert out[2, 0].item() == pytest.approx(64.0 * math.cos(math.acos(-0.95) + 0.5))


def test_cosface_and_combined_margins_apply_every_term():
    cosface = margin_logits(COS, LABELS, scale=30.0, arc_margin=0.0, cos_margin=0.35)
    both = margin_logits(COS, LABELS, scale=30.0, arc_margin=0.2, cos_margin=0.35)
    rows = torch.arange(4)
    torch.testing.assert_close(cosface[rows, LABELS], 30.0 * (COS[rows, LABELS] - 0.35))
    expected = torch.tensor([30.0 * (math.cos(math.acos(c) + 0.2) - 0.35) for c in COS[rows, LABELS].tolist()], dtype=torch.float64)
    torch.testing.assert_close(both[rows, LABELS], expected)


def test_straight_through_gradient_is_s_times_softmax_minus_onehot():
    cos = COS.clone().requires_grad_(True)
    logits = margin_logits(cos, LABELS, scale=64.0, arc_margin=0.5, gradient="straight-through")
    F.cross_entropy(logits, LABELS, reduction="sum").backward()
    expected = 64.0 * (torch.softmax(logits.detach(), dim=1) - F.one_hot(LABELS, 3))
    torch.testing.assert_close(cos.grad, expected)


def test_exact_gradient_agrees_with_an_independent_autograd_formula():
    cos = COS.clone()
    cos[3, 1] = -0.97  # the floor on sin(theta) only matters at |c| = 1
    a = cos.clone().requires_grad_(True)
    F.cross_entropy(margin_logits(a, LABELS, scale=64.0, arc_margin=0.5, cos_margin=0.1, gradient="exact"), LABELS).backward()

    b = cos.clone().requires_grad_(True)
    onehot = F.one_hot(LABELS, 3).bool()
    reference = 64.0 * torch.where(onehot, torch.cos(torch.acos(b) + 0.5) - 0.1, b)
    F.cross_entropy(reference, LABELS).backward()
    torch.testing.assert_close(a.grad, b.grad)
    # and it differs from straight-through by sin(theta + m) / sin(theta) on the targets
    c = cos.clone().requires_grad_(True)
    F.cross_entropy(margin_logits(c, LABELS, scale=64.0, arc_margin=0.5, cos_margin=0.1), LABELS).backward()
    rows = torch.arange(4)
    theta = torch.acos(cos[rows, LABELS])
    torch.testing.assert_close(a.grad[rows, LABELS], c.grad[rows, LABELS] * torch.sin(theta + 0.5) / torch.sin(theta))


def test_logits_are_float32_from_low_precision_embeddings():
    torch.manual_seed(0)
    emb, w = torch.randn(5, 8).bfloat16(), torch.randn(7, 8)
    cos = cosine_matrix(emb, w)
    assert cos.dtype == torch.float32 and cos.abs().max() <= 1.0
    torch.testing.assert_close(cos, F.normalize(emb.float()) @ F.normalize(w).t())


def test_class_sampling_keeps_every_positive_and_remaps_labels():
    torch.manual_seed(0)
    labels = torch.tensor([7, 3, 7, 99, 42, 3])
    index, remapped = sample_classes(labels, num_classes=100, num_sample=10)
    assert index.numel() == 10 and torch.equal(index, index.unique())  # sorted, distinct
    assert {3, 7, 42, 99} <= set(index.tolist())
    assert torch.equal(index[remapped], labels)
    few, remapped = sample_classes(labels, num_classes=100, num_sample=2)  # fewer than the positives: all positives
    assert few.tolist() == [3, 7, 42, 99] and torch.equal(few[remapped], labels)


def test_sampled_head_scores_the_same_logits_on_its_columns():
    torch.manual_seed(0)
    head = MarginHead(50, 16, sample_rate=0.2).train()
    emb, labels = torch.randn(6, 16), torch.tensor([1, 5, 5, 49, 20, 0])
    torch.manual_seed(3)
    logits, remapped = head.logits(emb, labels)
    torch.manual_seed(3)
    index, _ = sample_classes(labels, 50, 10)
    assert logits.shape == (6, 10)
    full = margin_logits(cosine_matrix(emb, head.weight), labels)
    torch.testing.assert_close(logits, full[:, index])
    head.eval()  # evaluation scores every class
    assert head.logits(emb, labels)[0].shape == (6, 50)


def test_loss_gradient_reaches_only_the_sampled_centres():
    torch.manual_seed(0)
    head = MarginHead(40, 8, sample_rate=0.25)
    head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3])).backward()
    touched = (head.weight.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert len(touched) == 10 and {0, 1, 2, 3} <= set(touched)


def test_bad_head_options_are_refused():
    with pytest.raises(InvalidInputError, match="sample_rate"):
        MarginHead(10, 8, sample_rate=0.0)
    with pytest.raises(InvalidInputError, match="gradient"):
        MarginHead(10, 8, gradient="approx")


# ------------------------------------------------------------------------------------------ AdaFace


def adaface_batches(classes=37, dim=64, count=24, steps=3):
    """Fixed batches (the self-test's C 37, D 64, B 24) that reach every clamp: norms below 0.001 and above
    100, an embedding on its target centre with a large norm (theta - m ms < 1e-3), one opposite its target
    with a small norm (theta - m ms > pi - 1e-3), and cosines at +-(1 - 1e-3) off the target."""
    g = torch.Generator().manual_seed(25)
    kernel = torch.rand(dim, classes, generator=g) * 2 - 1
    out = []
    for step in range(steps):
        labels = torch.randint(0, classes, (count,), generator=g)
        scale = torch.exp(torch.rand(count, 1, generator=g) * 4.5) * 2  # norms ~ 16 .. 1440
        x = torch.randn(count, dim, generator=g) / 8 * scale
        x[0] *= 1e-5 / x[0].norm()  # below the 0.001 floor
        x[1] = kernel[:, labels[1]] * 30  # on its centre, large norm
        x[2] = -kernel[:, labels[2]] * 0.05  # opposite its centre, small norm
        x[3] = kernel[:, (labels[3] + 1) % classes] * 10  # on another centre
        out.append((x, labels))
    return kernel, out


@pytest.mark.parametrize("h", [0.333, 3.0])  # 3.0: ms clipped at +-1 for most samples
def test_adaface_loss_gradient_and_buffers_equal_the_reference_formula(h):
    kernel, batches = adaface_batches()
    head = AdaFaceHead(37, 64, h=h)
    assert head.batch_mean.tolist() == [20.0] and head.batch_std.tolist() == [100.0]
    with torch.no_grad():
        head.kernel.copy_(kernel)
    mean, std = 20.0, 100.0
    for x, labels in batches:
        a = x.clone().requires_grad_(True)
        head.kernel.grad = None
        loss = head(a, labels)
        loss.backward()
        b, k = x.clone().double().requires_grad_(True), kernel.clone().double().requires_grad_(True)
        expected, mean, std = reference_adaface(b, k, labels, mean, std, h=h)
        expected.backward()
        assert loss.dtype == torch.float32
        assert abs(loss.item() - expected.item()) < 1e-5, (loss.item(), expected.item())
        assert head.batch_mean.item() == pytest.approx(mean, abs=1e-5) and head.batch_std.item() == pytest.approx(std, abs=1e-5)
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(head.kernel.grad.double(), k.grad, atol=1e-5, rtol=1e-4)
        assert b.grad[0].abs().max() > 0 and k.grad.abs().max() > 0


def test_adaface_margin_is_not_straight_through_and_matches_arcface_cosface_ends():
    """ms = -1 is ArcFace(m), 0 CosFace(m), +1 cos(theta - m) - 2m; and d logit_y / d cos_y carries
    sin(theta - m ms) / sin(theta) (a straight-through head would give 1)."""
    head = AdaFaceHead(3, 2, scale=10.0, margin=0.4, h=1.0).eval()  # eval: the buffers stay where they are put
    with torch.no_grad():
        head.kernel.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
        head.batch_mean.fill_(50.0)
        head.batch_std.fill_(10.0)  # ms = clip((n - 50) / 10.001, -1, 1)
    direction = torch.tensor([math.cos(1.1), math.sin(1.1)])
    labels = torch.tensor([0])
    for norm, target in ((30.0, math.cos(1.1 + 0.4)), (50.0, math.cos(1.1) - 0.4), (70.0, math.cos(1.1 - 0.4) - 0.8)):
        logits = head.logits((direction * norm).reshape(1, 2), labels)
        assert logits[0, 0].item() == pytest.approx(10.0 * target, abs=1e-5)
        assert logits[0, 1].item() == pytest.approx(10.0 * math.sin(1.1), abs=1e-5)
        assert logits[0, 2].item() == pytest.approx(-10.0 * math.cos(1.1), abs=1e-5)
    # the gradient through the margin at ms = +1 (norm 120, clipped to 100): with u = x / |x| and k0 = (1, 0),
    # d logit / d x = s sin(theta - m) / sin(theta) (k0 - c u) / |x|; the norm itself gets no gradient via ms
    x = (direction * 120.0).reshape(1, 2).requires_grad_(True)
    (grad,) = torch.autograd.grad(head.logits(x, labels)[0, 0], x)
    u = direction
    factor = 10.0 * math.sin(1.1 - 0.4) / math.sin(1.1)
    expected = factor * (torch.tensor([1.0, 0.0]) - math.cos(1.1) * u) / 120.0
    torch.testing.assert_close(grad[0], expected, atol=1e-6, rtol=1e-5)
    assert abs(float(grad[0] @ u)) < 1e-6  # radial component: none


def test_adaface_kernel_layout_init_state_dict_and_refusals():
    torch.manual_seed(0)
    head = AdaFaceHead(10, 6)
    assert head.kernel.shape == (6, 10) and head.weight.shape == (10, 6)
    assert torch.equal(head.weight, head.kernel.t())
    torch.testing.assert_close(head.kernel.norm(dim=0), torch.ones(10))
    assert set(head.state_dict()) == {"kernel", "batch_mean", "batch_std"}
    assert head.settings() == {"name": "adaface", "num_classes": 10, "embedding_size": 6, "scale": 64.0, "margin": 0.4,
                               "h": 0.333, "t_alpha": 0.01}
    other = AdaFaceHead(10, 6)  # a state dict holding `weight` (C, D) loads into the kernel
    other.load_state_dict({"weight": head.weight.detach().clone(), "batch_mean": torch.tensor([3.0]),
                           "batch_std": torch.tensor([4.0]), "t": torch.zeros(1)})  # AdaFace's own has `t`
    assert torch.equal(other.kernel, head.kernel) and other.batch_mean.item() == 3.0
    head.eval()  # an evaluation call leaves the statistics alone
    head(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]))
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    with pytest.raises(InvalidInputError, match="at least 2 embeddings"):
        head.train()(torch.randn(1, 6), torch.tensor([0]))
    with pytest.raises(InvalidInputError, match="t_alpha"):
        AdaFaceHead(10, 6, t_alpha=0.0)
    with pytest.raises(InvalidInputError, match="2 classes"):
        AdaFaceHead(1, 6)


def test_adaface_logits_are_float32_under_autocast():
    torch.manual_seed(0)
    head = AdaFaceHead(5, 8)
    emb, labels = torch.randn(4, 8) * 20, torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(emb.bfloat16(), labels)
    assert loss.dtype == torch.float32
    expected, _, _ = reference_adaface(emb.bfloat16().float(), head.kernel.detach(), labels, 20.0, 100.0)
    assert abs(loss.item() - expected.item()) < 1e-5
