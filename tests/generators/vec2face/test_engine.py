"""Vec2Face in the engine and the CLI: the smoke recipe on vec2face-tiny writes every format and a
run interrupted mid-way resumes to identical files; `synthface generate --model vec2face-tiny`;
the shipped HSFace10K recipe. Random weights: these prove the plumbing, never image quality."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthface import engine
from synthface.errors import RunInterruptedError
from synthface.recipe import load_recipe
from tests.cli_helpers import run_cli_inprocess
from tests.helpers.engine import read_labels, tree_digest

pytestmark = pytest.mark.usefixtures("one_thread")

VEC2FACE_TINY = ["--set", "generation.model='vec2face-tiny'"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke recipe on vec2face-tiny through the engine API (a module fixture has no capsys)."""
    out = tmp_path_factory.mktemp("v2f") / "run"
    recipe = load_recipe("smoke", ["generation.model='vec2face-tiny'"])
    renderer = engine.build_renderer(recipe, engine.Ranks())
    engine.run(recipe, out, renderer=renderer)
    return out, recipe, renderer


def test_smoke_on_vec2face_tiny_writes_every_format(tmp_path, capsys):
    out = tmp_path / "run"
    result = run_cli_inprocess(capsys, "run", "smoke", "--out", out, *VEC2FACE_TINY)
    assert result.returncode == 0, result.output
    assert "32 of 32 candidates" in result.stdout
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 32 and {r["identity"] for r in rows} == set(range(8))
    for fmt in ("imagefolder", "recordio", "webdataset", "parquet"):
        labels = read_labels(fmt, out / "export" / fmt)
        assert sorted(set(labels)) == list(range(8)) and len(labels) == 32 and labels.count(0) == 4, fmt
    crops = sorted((out / "export" / "imagefolder").rglob("*.jpg"))
    assert len(crops) == 32 and all(Image.open(p).size == (112, 112) for p in crops)  # Vec2Face's own size
    card = (out / "README.md").read_text()
    assert "vec2face-tiny" in card and "random weights" in card


def test_an_interrupted_vec2face_run_resumes_to_identical_files(smoke_run, tmp_path):
    """The renderer dies on its third batch (shard 1 of 3 half-rendered), as a killed process would;
    the rerun redoes what is missing and the files equal an uninterrupted run's."""
    reference, recipe, renderer = smoke_run
    calls = 0

    def dies_on_the_third_batch(conditions, seeds):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt("killed")
        return renderer(conditions, seeds)

    out = tmp_path / "run"
    with pytest.raises(RunInterruptedError, match="rerun to resume"):  # a Ctrl-C leaves the run resumable
        engine.run(recipe, out, renderer=dies_on_the_third_batch)
    summary = engine.run(recipe, out, renderer=renderer)
    assert summary.shards_skipped and summary.shards_run  # something was done before the kill, the rest after
    assert tree_digest(out) == tree_digest(reference)
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


def test_generate_renders_vec2face_at_its_native_size(tmp_path, capsys):
    from safetensors.numpy import save_file

    ids = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    save_file({"ids": ids / np.linalg.norm(ids, axis=1, keepdims=True)}, str(tmp_path / "ids.safetensors"))
    result = run_cli_inprocess(capsys, "generate", "--ids", tmp_path / "ids.safetensors", "-k", "2", "--model",
                               "vec2face-tiny", "--device", "cpu", "--out", tmp_path / "out", "--batch-size", "3")
    assert result.returncode == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["size"] == [112, 112] and manifest["model"] == "vec2face-tiny"
    assert manifest["licence"].startswith("random weights")
    from synthface.identity import load_bank
    from synthface.render import build_renderer

    vectors = load_bank(tmp_path / "ids.safetensors").vectors
    renderer = build_renderer("vec2face-tiny", device="cpu")
    for row in manifest["images"]:
        (image,) = renderer(vectors[[row["identity"]]], [row["seed"]])
        png = np.asarray(Image.open(tmp_path / "out" / row["file"]))
        assert np.abs(png.astype(np.int16) - image).max() <= 1, row  # batches of 3 vs 1: GEMM rounding only
    wrong = run_cli_inprocess(capsys, "generate", "--ids", tmp_path / "ids.safetensors", "-k", "1", "--model",
                              "vec2face-tiny", "--device", "cpu", "--out", tmp_path / "o2", "--size", "128")
    assert wrong.returncode != 0 and "Vec2Face renders 112 x 112 images only" in wrong.output


def test_the_hsface10k_vec2face_recipe_is_the_published_procedure():
    from synthface.generators import family_for
    from synthface.generators.vec2face.family import Vec2FaceFamily
    from synthface.recipe import shipped_recipe

    shipped = shipped_recipe("hsface10k-vec2face")
    recipe = load_recipe(shipped.path)
    assert (recipe.identities.count, recipe.variation.images_per_identity) == (10_000, 50)
    assert recipe.variation.perturbation == {0.96: 0.4, 0.9: 0.4, 0.82: 0.2}  # sigma 0.3 / 0.5 / 0.7
    assert isinstance(family_for(recipe.generation.model), Vec2FaceFamily)
    header = shipped.path.read_text().split("\nname")[0]
    for needle in ("Makes:", "Time:", "Weights:", "Licence:", "AttrOP", "non-commercial"):
        assert needle in header, needle
    # Each identity's 65 candidates get the 40/40/20 mixture of target cosines.
    targets = [t.target_cos for t in engine.plan_identity(recipe, 0)]
    assert len(targets) == 65 and sorted(np.unique(targets, return_counts=True)[1]) == [13, 26, 26]
