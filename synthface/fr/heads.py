"""Margin-softmax heads: ArcFace and CosFace (and both at once), with optional class-centre sampling.

For an embedding x, class centres W and its label y, the cosines c_j = <x/|x|, W_j/|W_j|> (float32,
clamped to [-1, 1]) become logits s * c_j, except the target one, which becomes
s * (cos(theta_y + m_arc) - m_cos) with theta_y = arccos(c_y). ArcFace is m_arc 0.5, m_cos 0;
CosFace m_arc 0, m_cos 0.35 or 0.4; both margins are applied when both are set (arcface_torch's
"combined" margin drops m_arc when m_cos > 0; this one does not). There is no "easy margin"
branch: theta_y + m_arc > pi uses the same formula.

Gradient: "straight-through" (arcface_torch and the HSFace recipe apply the margin in place under
no_grad) passes d loss / d c_y unchanged through the margin, so d loss / d c = s (softmax - onehot);
"exact" differentiates the margin as written (for ArcFace a factor sin(theta + m) / sin(theta) on
the target cosine; sin(theta) is floored at sqrt(1e-7) so c_y = +-1 stays finite).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from synthface.errors import InvalidInputError

Gradient = Literal["straight-through", "exact"]
GRADIENTS = ("straight-through", "exact")
_MIN_SIN2 = 1e-7


def cosine_matrix(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, D) x (C, D) -> (N, C) float32 cosines in [-1, 1], computed outside autocast."""
    with torch.autocast(embeddings.device.type, enabled=False):
        cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(weight.float(), dim=1).t()
    return cos.clamp(-1.0, 1.0)


def margin_logits(
    cos: torch.Tensor, labels: torch.Tensor, *, scale: float = 64.0, arc_margin: float = 0.5, cos_margin: float = 0.0,
    gradient: Gradient = "straight-through",
) -> torch.Tensor:
    """s * cosines with the target of row i (column labels[i]) replaced by s * (cos(theta + m_arc) - m_cos)."""
    if gradient not in GRADIENTS:
        raise InvalidInputError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}.")
    rows = torch.arange(cos.shape[0], device=cos.device)
    c = cos[rows, labels]
    sin = (1.0 - c * c).clamp_min(_MIN_SIN2).sqrt()
    target = c * math.cos(arc_margin) - sin * math.sin(arc_margin) - cos_margin
    if gradient == "straight-through":
        target = c + (target - c).detach()
    onehot = F.one_hot(labels, cos.shape[1]).to(torch.bool)
    return scale * torch.where(onehot, target.unsqueeze(1), cos)


def sample_classes(labels: torch.Tensor, num_classes: int, num_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted class ids, labels remapped into them): every class in `labels`, filled with distinct
    random other classes (torch's global generator) up to `num_sample` in all, as PartialFC does."""
    positive = torch.unique(labels)
    if num_sample <= positive.numel():
        index = positive
    else:
        scores = torch.rand(num_classes, device=labels.device)
        scores[positive] = 2.0  # above every random score: always drawn
        index = torch.topk(scores, num_sample).indices.sort().values
    return index, torch.searchsorted(index, labels)


class MarginHead(nn.Module):
    """Class centres W (C, D), initialised N(0, 0.01), and the margin loss on them.

    `sample_rate` < 1 scores each step against ceil(rate * C) centres: every class present in the
    batch plus random others; the rest get no gradient from the loss (weight decay still shrinks them).
    """

    def __init__(
        self, num_classes: int, embedding_size: int = 512, *, scale: float = 64.0, arc_margin: float = 0.5,
        cos_margin: float = 0.0, gradient: Gradient = "straight-through", sample_rate: float = 1.0,
    ):
        super().__init__()
        if num_classes < 2:
            raise InvalidInputError(f"A margin head needs at least 2 classes, got {num_classes}.")
        if not 0.0 < sample_rate <= 1.0:
            raise InvalidInputError(f"sample_rate must be in (0, 1], got {sample_rate}.")
        if gradient not in GRADIENTS:
            raise InvalidInputError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}.")
        self.num_classes, self.scale, self.gradient = num_classes, scale, gradient
        self.arc_margin, self.cos_margin = arc_margin, cos_margin
        self.num_sample = max(2, math.ceil(sample_rate * num_classes))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 logits over the scored classes, labels indexing those columns)."""
        weight = self.weight
        if self.training and self.num_sample < self.num_classes:
            index, labels = sample_classes(labels, self.num_classes, self.num_sample)
            weight = weight[index]
        cos = cosine_matrix(embeddings, weight)
        margins = dict(scale=self.scale, arc_margin=self.arc_margin, cos_margin=self.cos_margin, gradient=self.gradient)
        return margin_logits(cos, labels, **margins), labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy of the margin logits (float32)."""
        logits, labels = self.logits(embeddings, labels)
        return F.cross_entropy(logits, labels)
