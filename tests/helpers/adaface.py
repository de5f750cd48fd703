"""An independent AdaFace head formula for the tests (FR-EVAL.md section 4), not synthface's code."""

from __future__ import annotations

import math

import torch


def reference_adaface(x, kernel, labels, mean0, std0, *, s=64.0, m=0.4, h=0.333, t_alpha=0.01):
    """FR-EVAL.md section 4 written out independently, in float64, one sample at a time: (loss, new
    batch_mean, new batch_std). The norms enter only as plain numbers (detached); every clamp is torch.clamp
    (zero gradient outside), the margin differentiated as written."""
    x, kernel = x.double(), kernel.double()
    count, classes = x.shape[0], kernel.shape[1]
    norms = [math.sqrt(sum(v * v for v in row)) for row in x.detach().tolist()]
    n = [min(max(v, 0.001), 100.0) for v in norms]
    mu = sum(n) / count
    sd = math.sqrt(sum((v - mu) ** 2 for v in n) / (count - 1))  # unbiased
    mean, std = t_alpha * mu + (1 - t_alpha) * mean0, t_alpha * sd + (1 - t_alpha) * std0
    centres = torch.stack([kernel[:, j] / torch.sqrt((kernel[:, j] ** 2).sum()) for j in range(classes)])
    losses = []
    for i, y in enumerate(labels.tolist()):
        u = x[i] / torch.sqrt((x[i] ** 2).sum())
        c = torch.clamp(centres @ u, -1 + 1e-3, 1 - 1e-3)
        ms = max(-1.0, min(1.0, h * (n[i] - mean) / (std + 1e-3)))
        theta = torch.clamp(torch.acos(c[y]) - m * ms, 1e-3, math.pi - 1e-3)
        target = s * (torch.cos(theta) - m - m * ms)
        logits = torch.cat([s * c[:y], target.reshape(1), s * c[y + 1:]])
        losses.append(torch.logsumexp(logits, 0) - target)
    return torch.stack(losses).mean(), mean, std
