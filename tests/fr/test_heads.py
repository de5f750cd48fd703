"""Margin heads: closed-form logits, the straight-through and exact gradients, class-centre sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthface.errors import InvalidInputError
from synthface.fr.heads import MarginHead, cosine_matrix, margin_logits, sample_classes

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
