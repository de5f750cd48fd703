"""UIFace's two-stage sampler: the stage-1 attention map and distance against hand computations, the
switch rule (first step only stores; a switch takes effect from the next step; a switch at the last
stage-1 step changes nothing) against a scripted UNet and on the tiny model, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators.idiff import two_stage
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler
from synthface.generators.idiff.two_stage import (
    TwoStageSampler,
    attention_map,
    check_stage_threshold,
    partition_distance,
    stage_one_steps,
)


def bilinear(grid: list[list[float]], size: int) -> list[list[float]]:
    """Bilinear resize, align_corners False (half-pixel centres, edge-clamped), by hand."""
    n = len(grid)

    def coord(d):
        s = max((d + 0.5) * n / size - 0.5, 0.0)
        lo = min(int(math.floor(s)), n - 1)
        return lo, min(lo + 1, n - 1), s - lo

    out = []
    for y in range(size):
        y0, y1, fy = coord(y)
        row = []
        for x in range(size):
            x0, x1, fx = coord(x)
            top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx
            bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx
            row.append(top * (1 - fy) + bottom * fy)
        out.append(row)
    return out


def hand_map(cross: list[torch.Tensor], size: int) -> list[list[list[float]]]:
    """IDIFF.md's stage-1 map, image by image, with Python loops."""
    batch = cross[0].shape[0]
    result = []
    for b in range(batch):
        layers = []
        for logits in cross:
            _, heads, queries, tokens = logits.shape
            per_query = [0.0] * queries
            for h in range(heads):
                for k in range(tokens):
                    column = [float(logits[b, h, q, k]) for q in range(queries)]
                    top = max(column)
                    exps = [math.exp(v - top) for v in column]
                    total = sum(exps)
                    for q in range(queries):
                        per_query[q] += exps[q] / total / tokens / heads
            peak = max(per_query)
            side = int(round(queries ** 0.5))
            grid = [[per_query[r * side + c] / peak for c in range(side)] for r in range(side)]
            layers.append([[min(max(v, 0.0), 1.0) for v in row] for row in bilinear(grid, size)])
        mean = [[sum(layer[r][c] for layer in layers) / len(layers) for c in range(size)] for r in range(size)]
        low, high = min(map(min, mean)), max(map(max, mean))
        result.append([[(v - low) / (high - low) for v in row] for row in mean])
    return result


def test_attention_map_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    cross = [torch.randn(2, 3, 16, 5, generator=g) * 2, torch.randn(2, 2, 4, 5, generator=g) * 3,
             torch.randn(2, 1, 64, 5, generator=g)]
    got = attention_map(cross, 8)
    want = torch.tensor(hand_map(cross, 8))
    assert got.shape == (2, 8, 8)
    assert torch.allclose(got, want.float(), atol=1e-5)
    assert torch.allclose(got.amin(dim=(1, 2)), torch.zeros(2)) and torch.allclose(got.amax(dim=(1, 2)), torch.ones(2))


def test_softmax_is_over_query_positions():
    # one token whose logits rise along the queries: softmax over queries makes the map rise too;
    # a softmax over the (single) token would give a constant map (and NaN after min-max).
    logits = torch.arange(16.0).reshape(1, 1, 16, 1)
    m = attention_map([logits], 4)
    assert float(m[0, 0, 0]) == 0.0 and float(m[0, 3, 3]) == 1.0


def test_partition_distance_is_mean_absolute_difference():
    a, b = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    want = [sum(abs(float(a[i, r, c] - b[i, r, c])) for r in range(4) for c in range(4)) / 16 for i in range(3)]
    assert torch.allclose(partition_distance(a, b), torch.tensor(want), atol=1e-6)


def test_stage_one_steps_and_threshold_refusal():
    ts = IDiffDDIMScheduler.timestep_list(10)
    assert stage_one_steps(ts, 500) == [900, 800, 700, 600, 500]
    assert len(stage_one_steps(IDiffDDIMScheduler.timestep_list(50), 500)) == 25
    check_stage_threshold(ts, 900, 10)
    with pytest.raises(InvalidInputError, match="no stage-1 step") as err:
        check_stage_threshold(ts, 901, 10)
    assert "stage_threshold <= 900" in str(err.value) and "\n" not in str(err.value)


class ScriptedUNet:
    """forward_pair stand-in: eps_A = 1, eps_B = 3 everywhere; records the flags of every call."""

    def __init__(self):
        self.calls = []

    def forward_pair(self, sample, timestep, context, *, use_context, restandardise, return_cross=False):
        flags = use_context if isinstance(use_context, bool) else use_context.tolist()
        self.calls.append((int(timestep), flags, restandardise, return_cross))
        ones = torch.ones_like(sample)
        return ones, 3 * ones, ([torch.zeros(1)] if return_cross else None)


def test_switch_rule_against_a_scripted_run(monkeypatch):
    # Maps per stage-1 step, constant per image, so each distance is |difference of the constants|.
    levels = {900: (0.0, 0.0), 800: (0.5, 0.3), 700: (0.501, 0.6), 600: (0.9, 0.7), 500: (0.95, 0.7005)}
    monkeypatch.setattr(two_stage, "attention_map",
                        lambda cross, size: torch.tensor(levels[current[0]])[:, None, None].expand(2, size, size))
    unet, current = ScriptedUNet(), [0]
    sampler = TwoStageSampler(unet, torch.zeros(2, 512), guidance_scale=2.5, mse_threshold=0.01,
                              stage_threshold=500, map_size=4)
    x = torch.zeros(2, 3, 4, 4)
    outs = {}
    for t in IDiffDDIMScheduler.timestep_list(10):
        current[0] = t
        outs[t] = sampler.eps(x, t)
    # By hand: distances at 800: (0.5, 0.3); 700: (0.001, 0.3) -> image 0 switches;
    # 600: (0.399, 0.1); 500: (0.05, 0.0005) -> image 1 switches at the last stage-1 step.
    flags = {t: f for t, f, _, _ in unet.calls}
    assert flags[900] == flags[800] == flags[700] == [False, False]
    assert flags[600] == flags[500] == [True, False]  # image 0 from the step after its switch
    assert all(flags[t] is True for t in (400, 300, 200, 100, 0))
    assert all(r == (t < 500) and c == (t >= 500) for t, _, r, c in unet.calls)
    distances, switched = sampler.record()
    assert torch.allclose(distances, torch.tensor([[0.5, 0.3], [0.001, 0.3], [0.399, 0.1], [0.05, 0.0005]]), atol=1e-6)
    assert switched.tolist() == [700, 500]
    assert torch.equal(outs[900], torch.full_like(x, 3.0))  # stage 1: eps_B, unguided
    assert torch.allclose(outs[400], torch.full_like(x, 2.5 * 3 - 1.5 * 1))  # stage 2: (1 + s) eps_B - s eps_A


def test_a_switched_image_never_switches_back(monkeypatch):
    levels = iter([0.0, 0.0, 0.5, 0.9])  # distances 0 (switch), 0.5, 0.4
    monkeypatch.setattr(two_stage, "attention_map", lambda cross, size: torch.full((1, size, size), next(levels)))
    unet = ScriptedUNet()
    sampler = TwoStageSampler(unet, torch.zeros(1, 512), 2.0, 0.006, 0, 2)
    for t in (3, 2, 1, 0):
        sampler.eps(torch.zeros(1, 3, 2, 2), t)
    assert [f for _, f, _, _ in unet.calls] == [[False], [False], [True], [True]]
    assert sampler.record()[1].tolist() == [2]
