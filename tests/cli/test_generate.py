"""`synthface generate` end to end on the tiny model, run as a user would."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ids_file(tmp_path):
    ids = torch.nn.functional.normalize(torch.randn(3, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    path = tmp_path / "ids.safetensors"
    save_file({"ids": ids.contiguous()}, str(path))
    return path


def test_generate_writes_pngs_and_manifest_independent_of_batch_size(tmp_path, ids_file, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is far faster on a shared machine
    common = ["generate", "--ids", ids_file, "--images-per-id", "2", "--model", "tiny", "--steps", "2", "--device", "cpu"]
    a = run_cli(*common, "--out", tmp_path / "a", "--batch-size", "4")
    assert a.returncode == 0, a.stderr
    assert "wrote 6 images of 3 identities" in a.stdout
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["identities"] == 3 and manifest["images_per_id"] == 2 and manifest["size"] == [32, 32]
    assert [(r["identity"], r["image"]) for r in manifest["images"]] == [(i, j) for i in range(3) for j in range(2)]
    assert len({r["seed"] for r in manifest["images"]}) == 6
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    assert files == [r["file"] for r in manifest["images"]] == [f"{i:05d}/{j:03d}.png" for i in range(3) for j in range(2)]
    assert manifest["dtype"] == "fp32" and manifest["licence"].startswith("random weights")

    # The PNGs hold exactly what synthface.render's renderer makes for the same batches (the engine's
    # renderer makes the same bytes: tests/test_render.py).
    from synthface.engine import derive_seed
    from synthface.identity import load_bank
    from synthface.render import RenderSettings, build_renderer

    vectors = load_bank(ids_file).vectors
    renderer = build_renderer("tiny", settings=RenderSettings(steps=2), device="cpu")
    rows = manifest["images"]
    for first in range(0, len(rows), 4):
        chunk = rows[first:first + 4]
        assert [r["seed"] for r in chunk] == [derive_seed(0, r["identity"], r["image"]) for r in chunk]
        images = renderer(vectors[[r["identity"] for r in chunk]], [r["seed"] for r in chunk])
        for row, image in zip(chunk, images):
            assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / row["file"])), image), row["file"]

    # Same command in-process (the subprocess start-up dominates on a shared machine).
    from typer.testing import CliRunner

    from synthface.cli import app

    b = CliRunner().invoke(app, [str(x) for x in common] + ["--out", str(tmp_path / "b"), "--batch-size", "1"])
    assert b.exit_code == 0, b.output
    for name in files:  # an image depends on (seed, identity, image), not on what shared its batch
        pa = np.asarray(Image.open(tmp_path / "a" / name), dtype=np.int16)
        pb = np.asarray(Image.open(tmp_path / "b" / name), dtype=np.int16)
        assert pa.shape == (32, 32, 3) and np.abs(pa - pb).max() <= 1


def test_generate_without_weights_is_a_one_paragraph_error(tmp_path, ids_file, monkeypatch):
    from typer.testing import CliRunner

    from synthface.cli import app

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(app, ["generate", "--ids", str(ids_file), "-k", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "not in the local Hugging Face cache" in str(result.exception)
    assert "`synthface models download arc2face`" in str(result.exception)
