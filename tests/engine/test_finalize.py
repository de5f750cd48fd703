"""Finalize and identity verdicts at engine level, with a real recogniser on real photos
(tests/helpers/engine.py): collisions dropped, too few images resampled or dropped, full images kept,
the report and the card."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthface import engine
from synthface.faces import get_analyzer
from tests.helpers.engine import PhotoRenderer, noise_renderer, photo_recipe, run_photos, small_recipe


def test_drop_policy_drops_the_later_identity_of_a_collision(tmp_path):
    summary = run_photos(photo_recipe(collision_policy="drop"), tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    assert [r["drop_reason"] for r in rows if r["identity"] == 3] == ["collision"] * 3
    assert all(r["kept"] for r in rows if r["identity"] != 3)
    assert summary.stats["identities_kept"] == 3 and summary.stats["collisions"] == 1
    assert summary.stats["drop_reasons"] == {"collision": 3}
    assert not list((tmp_path / "run" / "shards").glob("resample-*"))


def test_too_few_images_are_rendered_again_in_new_rounds_or_dropped(tmp_path):
    swaps = {(1, 0): 4}  # identity 1's first image shows someone else
    people = {0: 0, 1: 1, 2: 2, 3: 3}
    recipe = photo_recipe(min_images=3, on_too_few="resample", max_rounds=3, min_cos=0.95)
    layout = engine.prepare_output(recipe, tmp_path / "again")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    renderer = PhotoRenderer(bank.vectors, recipe.seed, swaps, people=people)
    engine.run(recipe, tmp_path / "again", renderer=renderer, analyzer=get_analyzer("dlib"))
    rows = pq.read_table(tmp_path / "again" / "manifest.parquet").to_pylist()
    one = [r for r in rows if r["identity"] == 1]
    assert [(r["round"], r["image"]) for r in one] == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]
    assert [r["drop_reason"] for r in one] == ["low_similarity", "", "", "", "surplus", "surplus"]
    assert all(r["round"] == 0 for r in rows if r["identity"] != 1)

    recipe = photo_recipe(min_images=3, on_too_few="drop", min_cos=0.95)
    layout = engine.prepare_output(recipe, tmp_path / "drop")
    renderer = PhotoRenderer(bank.vectors, recipe.seed, swaps, people=people)
    summary = engine.run(recipe, tmp_path / "drop", renderer=renderer, analyzer=get_analyzer("dlib"))
    rows = pq.read_table(tmp_path / "drop" / "manifest.parquet").to_pylist()
    assert [r["drop_reason"] for r in rows if r["identity"] == 1] == ["low_similarity", "too_few", "too_few"]
    assert summary.stats["identities_kept"] == 3 and summary.stats["drop_reasons"]["too_few"] == 2


def test_keep_full_images_writes_the_whole_rendered_image_of_each_kept_crop(tmp_path):
    from PIL import Image

    recipe = small_recipe(export={"keep_full_images": True, "formats": ["imagefolder"]},
                          variation={"overgenerate": 1.5})
    engine.run(recipe, tmp_path / "run", renderer=noise_renderer(size=48))
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    kept = [r for r in rows if r["kept"]]
    fulls = sorted((tmp_path / "run" / "shards").rglob("full/*/*.png"))
    assert len(fulls) == len(kept) == 7 * 3 and len(rows) == 7 * 5
    seed_of = {(r["identity"], r["image"]): r["seed"] for r in rows}
    for path in fulls[:3]:
        ident, image = int(path.parent.name), int(path.stem)
        expected = noise_renderer(size=48)(np.zeros((1, 64), np.float32), [seed_of[ident, image]])[0]
        assert np.asarray(Image.open(path)).shape == expected.shape == (48, 48, 3)


def test_report_on_a_filter_off_run_embeds_its_kept_images_and_pose_comes_from_the_manifest(tmp_path, capsys):
    from tests.cli_helpers import run_cli_inprocess

    recipe = small_recipe(identities={"count": 3, "dim": 512}, export={"formats": ["imagefolder"]},
                          variation={"images_per_identity": 2, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}})
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    engine.run(recipe, tmp_path / "run", renderer=PhotoRenderer(bank.vectors, recipe.seed, {}))
    assert not (tmp_path / "run" / "report.json").exists()
    result = run_cli_inprocess(capsys, "report", tmp_path / "run", "--no-html")
    assert result.returncode == 0, result.output
    assert "kept images were embedded with dlib" in " ".join(result.output.split())
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["embedded_by"] == "dlib" and report["counts"]["kept"] == 6
    assert report["counts"]["identities_with_images"] == 3
    assert report["unique_identities"]["0.3"]["final"] >= 1  # measured on the fresh embeddings


def test_pose_section_reports_the_manifest_pose_of_kept_images(tmp_path):
    run_photos(photo_recipe(collision_policy="drop"), tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    kept = [r for r in rows if r["kept"]]
    assert all(np.isfinite([r["yaw"], r["pitch"], r["quality"]]).all() for r in kept)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for angle in ("yaw", "pitch"):
        assert report["pose"][angle]["mean"] == pytest.approx(np.mean([r[angle] for r in kept]), abs=1e-4)
    # Flipped renders (the photo double flips half its images) mirror the yaw: both signs are present.
    assert min(r["yaw"] for r in kept) < 0 < max(r["yaw"] for r in kept)


@pytest.mark.parametrize(("options", "excluded"), [({"landmarks": 68}, True), ({}, False)])
def test_the_card_says_commercial_use_is_excluded_exactly_when_the_analyser_that_ran_restricts_it(tmp_path, options,
                                                                                                  excluded):
    """dlib with its 68-point predictor (iBUG 300-W data) excludes commercial use; the default 5-point
    one does not. The engine builds the analyser from the recipe and the card reads its licence."""
    recipe = small_recipe(identities={"count": 2, "dim": 512}, generation={"model": "tiny"},
                          variation={"images_per_identity": 1, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}},
                          filtering={"enabled": True, "analyzer": "dlib", "analyzer_options": options},
                          export={"formats": ["imagefolder"]})
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    engine.run(recipe, tmp_path / "run", renderer=PhotoRenderer(bank.vectors, recipe.seed, {}))
    card = engine.RunLayout(tmp_path / "run").card.read_text()
    assert ("commercial use is excluded" in card) is excluded
    assert ("license_name: \"non-commercial-research\"" in card) is excluded
    row = "| dlib (landmarks=68) | filter / face analysis | public domain (Davis King); iBUG 300-W licence: no commercial use |"
    assert (row in card) is excluded
    assert excluded or "| dlib | filter / face analysis | public domain (Davis King) |" in card


class DeclaresItsThreshold:
    """A custom analyser (dlib underneath) that declares its own same-person cosine, 0.89: between
    ArcFace's 0.3 and dlib's 0.92, so a verdict that only 0.89 explains shows that it was read."""

    name, license, license_restricted, embedding_space, same_person_cos = "custom", "test", False, "custom", 0.89

    def __init__(self):
        self.inner = get_analyzer("dlib")
        self.embedding_dim = self.inner.embedding_dim

    def analyze(self, images, *, all_faces=False):
        return self.inner.analyze(images, all_faces=all_faces)


def test_the_filter_defaults_min_cos_to_a_custom_analysers_declared_threshold(tmp_path):
    # Two images of each identity show other people: with five images the trimmed centre leaves at
    # least one of them out, so their cosines (~0.87-0.95) straddle 0.89 and dlib's 0.92.
    swaps = {(0, 0): 4, (1, 0): 5, (2, 0): 3, (3, 0): 5, (0, 1): 5, (1, 1): 0, (2, 1): 4, (3, 1): 1}
    recipe = small_recipe(identities={"count": 4, "dim": 512}, generation={"batch_size": 10},
                          variation={"images_per_identity": 5, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}},
                          filtering={"enabled": True, "analyzer": "dlib", "near_duplicate_cos": 1.0,
                                     "collision_cos": 1.0, "on_too_few": "drop"},
                          export={"formats": ["imagefolder"]}, compute={"shard_size": 4})
    assert recipe.filtering.min_cos is None  # the default: the analyser's own threshold
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    renderer = PhotoRenderer(bank.vectors, recipe.seed, swaps, people={0: 0, 1: 1, 2: 2, 3: 3})
    engine.run(recipe, tmp_path / "run", renderer=renderer, analyzer=DeclaresItsThreshold())
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    cos = np.array([r["filter_cos"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    np.testing.assert_array_equal(kept, cos >= 0.89)
    assert {r["drop_reason"] for r in rows if not r["kept"]} == {"low_similarity"}
    assert ((cos > 0.3) & ~kept).any()  # ArcFace's 0.3 would have kept these
    assert ((cos < 0.92) & kept).any()  # dlib's 0.92 would have dropped these
    models = engine.RunLayout(tmp_path / "run").record(0)["models"]
    assert {"name": "custom", "same_person_cos": 0.89, "licence": "test"}.items() <= models[1].items()


def test_report_on_a_filter_off_run_leaves_out_faceless_images_and_skips_face_measures_when_none_has_one(tmp_path, capsys):
    from tests.cli_helpers import run_cli_inprocess

    recipe = small_recipe(identities={"count": 3, "dim": 512}, export={"formats": ["imagefolder"]},
                          variation={"images_per_identity": 2, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}})
    layout = engine.prepare_output(recipe, tmp_path / "mixed")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    photos, noise = PhotoRenderer(bank.vectors, recipe.seed, {}), noise_renderer(size=64)
    first_seeds = {engine.plan_identity(recipe, i)[0].seed for i in range(3)}

    def mixed(conditions, seeds):  # each identity's first image is noise (no face), the second a photo
        return [noise(conditions[j : j + 1], [s])[0] if s in first_seeds else photos(conditions[j : j + 1], [s])[0]
                for j, s in enumerate(seeds)]

    engine.run(recipe, tmp_path / "mixed", renderer=mixed)
    result = run_cli_inprocess(capsys, "report", tmp_path / "mixed", "--no-html")
    assert result.returncode == 0, result.output
    report = json.loads((tmp_path / "mixed" / "report.json").read_text())
    assert report["embedded_by"] == "dlib (no face in 3 of 6 kept images: left out)"
    assert report["counts"]["kept"] == 3

    engine.run(recipe, tmp_path / "noise", renderer=noise_renderer(size=64))
    result = run_cli_inprocess(capsys, "report", tmp_path / "noise", "--no-html")
    assert result.returncode == 0 and "Traceback" not in result.output, result.output
    assert "found no face in any of the 6 kept images" in result.stdout and "random weights" in result.stdout
    report = json.loads((tmp_path / "noise" / "report.json").read_text())
    assert report["counts"]["kept"] == 6 and report["verification"] is None  # counted, not measured
    assert "found no face in any of the 6 kept images" in report["skipped"]["verification"]
