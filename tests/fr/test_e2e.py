"""End to end through the CLI: a toy set of class-specific shapes, exported by synthface, trained with
the tiny preset, verified on a held-out .bin of the same classes; and the CLI's refusals."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from synthface.export import Sample, write_format
from synthface.fr.backbones import iresnet
from synthface.fr.benchmarks.bin import write_bin
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

COLOURS = [(230, 60, 60), (60, 230, 60), (60, 60, 230), (230, 230, 60)]


pytestmark = pytest.mark.usefixtures("one_thread")


def shape_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Class = one of 4 shapes x one of 4 colours, with random position, size, colour shift and noise."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    colour = tuple(int(np.clip(v + rng.integers(-25, 25), 0, 255)) for v in COLOURS[label % 4])
    cx, cy = size / 2 + rng.uniform(-3, 3, 2)
    r = size * rng.uniform(0.25, 0.35)
    kind = label // 4
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=colour)
        draw.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=colour)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("fr_toy")
    rng = np.random.default_rng(0)
    samples = [Sample(c, f"{c:02d}_{k:02d}", encode(shape_image(c, rng))) for c in range(16) for k in range(16)]
    write_format("recordio", samples, root / "set" / "export" / "recordio")
    rng = np.random.default_rng(1)  # held-out images of the same classes: 50 genuine, 50 impostor pairs
    images, issame = [], []
    for i in range(100):
        a = int(rng.integers(16))
        b = a if i % 2 == 0 else int((a + rng.integers(1, 16)) % 16)
        images += [encode(shape_image(a, rng), "PNG"), encode(shape_image(b, rng), "PNG")]
        issame.append(a == b)
    (root / "bins").mkdir()
    write_bin(root / "bins" / "lfw.bin", images, issame)
    return root


def test_train_then_eval_beats_chance(toy, capsys):
    run = toy / "run"
    result = run_cli_inprocess(capsys, "train", toy / "set", "--out", run, "--preset", "tiny", "--eval-bins", toy / "bins",
                               "--no-progress")
    assert result.returncode == 0, result.output
    losses = [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(losses) == 7 and losses[-1] < 0.5 * losses[0]  # 32 steps (4 epochs x 8), logged every 5
    results = json.loads((run / "results.json").read_text())
    accuracy = results["sets"]["lfw"]["accuracy"]
    assert accuracy >= 0.8 and results["average"] == accuracy  # chance is 0.5
    assert "lfw" in result.stdout and "average" in result.stdout
    state = torch.load(run / "model.pt")
    assert "features.running_mean" in state and not any(k.startswith(("head", "backbone.")) for k in state)

    out = toy / "results.json"
    again = run_cli_inprocess(capsys, "eval", run, "--bins", toy / "bins", "--sets", "lfw", "--out", out)
    assert again.returncode == 0, again.output
    assert json.loads(out.read_text())["sets"] == results["sets"]


def test_cli_refusals(toy, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    assert_clean_refusal(run_cli_inprocess(capsys, "train", tmp_path / "notes", "--out", tmp_path / "r", "--preset", "tiny"),
                         2, "not an export", "synthface export")
    assert_clean_refusal(run_cli_inprocess(capsys, "train", toy / "set", "--out", tmp_path / "r", "--preset", "tiny",
                                           "--set", "lr=-1"), 2, "must be positive")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", tmp_path / "nothing.pt", "--bins", toy / "bins"), 6, "does not exist")
    model = tmp_path / "model.pt"
    torch.save(iresnet("r18", widths=(8, 8, 16, 16), num_features=16, input_size=32).state_dict(), model)
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model, "--bins", tmp_path / "nobins"), 2, "training-set archives")

    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "lfw.bin").write_bytes((toy / "bins" / "lfw.bin").read_bytes()[:5000])
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, tmp_path / "resnet.pt")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", tmp_path / "resnet.pt", "--bins", toy / "bins"), 2, "not an IResNet")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model, "--bins", bins), 2, "truncated or corrupt")
    with open(bins / "lfw.bin", "wb") as handle:
        pickle.dump(([b"\xff\xd8"] * 21, [True] * 10), handle, protocol=2)
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model, "--bins", bins), 2, "21 images for 10 pair labels")
