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

AdaFaceHead (AdaFace, Kim et al. CVPR 2022; written from the description in FR-EVAL.md section 4)
scales the margin per sample by the embedding's norm, a proxy of image quality: see its docstring.
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


class AdaFaceHead(nn.Module):
    """AdaFace's adaptive-margin head on raw (un-normalised) embeddings: head(embeddings, labels) -> mean CE.

    With n = clip(|x|, 0.001, 100) (detached), the buffers are first updated from the batch,
    batch_mean <- t_alpha * mean(n) + (1 - t_alpha) * batch_mean and batch_std likewise with torch's
    unbiased std (they start at 20 and 100), then ms = clip(h * (n - batch_mean) / (batch_std + 1e-3), -1, 1)
    per sample. Cosines c = (x / |x|) . (kernel columns / their norms), clamped to [-1 + 1e-3, 1 - 1e-3];
    every logit is s * cos(clip(arccos(c) + g, 1e-3, pi - 1e-3)), with g = -m * ms on the target and 0
    elsewhere, and the target also loses s * (m + m * ms). ms = -1 is ArcFace(m), 0 CosFace(m), +1
    cos(theta - m) - 2m. The margin is differentiated as written; the norm reaches it only through the
    detached n. Computed in float32, also under autocast.

    Class centres are `kernel` (D, C) as AdaFace stores them (so its checkpoints' `head.kernel` loads),
    initialised uniform(-1, 1) with unit-norm columns; `weight` is the same tensor as (C, D). A state
    dict holding `weight` (C, D) instead of `kernel` loads too, and AdaFace's unused `t` buffer is dropped. The buffers move only in training mode
    (AdaFace never runs its head in eval mode; here an evaluation call leaves them as they are).

        head = AdaFaceHead(10_000, 512)          # s 64, m 0.4, h 0.333, t_alpha 0.01: the published recipe
        loss = head(backbone(images), labels)    # raw embeddings: the head normalises
    """

    eps = 1e-3

    def __init__(self, num_classes: int, embedding_size: int = 512, scale: float = 64.0, margin: float = 0.4,
                 h: float = 0.333, t_alpha: float = 0.01):
        super().__init__()
        if num_classes < 2:
            raise InvalidInputError(f"The AdaFace head needs at least 2 classes, got {num_classes}.")
        if not 0.0 < t_alpha <= 1.0:
            raise InvalidInputError(f"t_alpha (the norm statistics' EMA weight) must be in (0, 1], got {t_alpha}.")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.scale, self.margin, self.h, self.t_alpha = float(scale), float(margin), float(h), float(t_alpha)
        kernel = torch.empty(embedding_size, num_classes).uniform_(-1.0, 1.0)
        self.kernel = nn.Parameter(kernel / kernel.norm(dim=0, keepdim=True))
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    @property
    def weight(self) -> torch.Tensor:
        """The class centres as (C, D), a view of `kernel` (D, C)."""
        return self.kernel.t()

    def settings(self) -> dict:
        """The constructor's arguments (config.json records them)."""
        return {"name": "adaface", "num_classes": self.num_classes, "embedding_size": self.embedding_size,
                "scale": self.scale, "margin": self.margin, "h": self.h, "t_alpha": self.t_alpha}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "t", None)  # AdaFace's head registers an unused step counter `t`
        weight = state_dict.get(prefix + "weight")
        if prefix + "kernel" not in state_dict and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            state_dict[prefix + "kernel"] = state_dict.pop(prefix + "weight").t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """(N,) detached norms -> (N, 1) ms in [-1, 1], after the training-mode EMA update of the buffers."""
        n = norms.detach().clamp(0.001, 100.0).reshape(-1, 1)
        if self.training:
            if n.shape[0] < 2:
                raise InvalidInputError(
                    "The AdaFace head needs at least 2 embeddings per batch in training (its norm statistics use "
                    "the unbiased std); raise the batch size (--set batch_size=N).")
            with torch.no_grad():
                self.batch_mean.copy_(self.t_alpha * n.mean() + (1.0 - self.t_alpha) * self.batch_mean)
                self.batch_std.copy_(self.t_alpha * n.std() + (1.0 - self.t_alpha) * self.batch_std)
        ms = (n - self.batch_mean) / (self.batch_std + self.eps)
        return (self.h * ms).clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 logits with the adaptive margin on each row's target column."""
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.float()
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            kernel = self.kernel.float()
            cos = (x / norms) @ (kernel / torch.linalg.vector_norm(kernel, dim=0, keepdim=True))
            cos = cos.clamp(-1.0 + self.eps, 1.0 - self.eps)
            ms = self.margin_scaler(norms)
            onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
            theta = torch.acos(cos) + onehot * (-self.margin * ms)
            cos = torch.cos(theta.clamp(self.eps, math.pi - self.eps)) - onehot * (self.margin + self.margin * ms)
            return self.scale * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy of the AdaFace logits (float32)."""
        return F.cross_entropy(self.logits(embeddings, labels), labels)
