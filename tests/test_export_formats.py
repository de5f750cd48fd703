"""ImageFolder, WebDataset and Parquet exports, the manifest, the dataset card, the registry, and
the atomic-output guarantee every writer shares."""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest

from synthface.errors import FileFormatError, InvalidInputError, OutputPathError
from synthface.export import (
    WRITERS,
    Sample,
    concat_manifests,
    export_formats,
    imagefolder,
    parquet,
    read_manifest,
    render_card,
    webdataset,
    write_card,
    write_manifest,
)
from tests.test_export_recordio import make_samples


def same_samples(got: list[Sample], want: list[Sample]) -> None:
    assert [(s.label, s.key, s.jpeg) for s in got] == [(s.label, s.key, s.jpeg) for s in want]


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_pads_class_folders_so_sorted_names_are_the_labels(tmp_path):
    samples = make_samples(identities=11, per_identity=2)
    summary = imagefolder.write(samples, tmp_path / "if")
    assert summary.num_samples == 22 and summary.num_classes == 11
    names = sorted(p.name for p in (tmp_path / "if").iterdir())
    assert names == [f"{c:02d}" for c in range(11)]  # what torchvision's ImageFolder indexes by
    got = imagefolder.read(tmp_path / "if")
    assert [(label, p.read_bytes()) for label, p in got] == [(s.label, s.jpeg) for s in samples]
    assert [p.name for _, p in got[:2]] == ["0.jpg", "1.jpg"]


def test_imagefolder_refuses_label_gaps(tmp_path):
    samples = [s for s in make_samples(3, 1) if s.label != 1]
    with pytest.raises(InvalidInputError, match="every label"):
        imagefolder.write(samples, tmp_path / "if")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- WebDataset


def test_webdataset_shards_members_and_determinism(tmp_path):
    samples = make_samples(3, 4)
    summary = webdataset.write(samples, tmp_path / "a", samples_per_shard=5)
    webdataset.write(samples, tmp_path / "b", samples_per_shard=5)
    assert summary.files == ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar")
    for name in summary.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["0000000_0000.jpg", "0000000_0000.cls", "0000000_0000.json"]
    assert all(m.mtime == 0 and m.uid == 0 for m in members)
    got = list(webdataset.read(tmp_path / "a"))
    same_samples(got, samples)
    assert got[0].meta == {"identity": 0, "image": 0, "seed": 0, "filter_cos": None}  # NaN -> JSON null


def test_webdataset_shuffle_keeps_every_sample(tmp_path):
    samples = make_samples(3, 4)
    webdataset.write(samples, tmp_path / "s", shuffle=True, seed=5)
    got = list(webdataset.read(tmp_path / "s"))
    assert [s.key for s in got] != [s.key for s in samples]
    same_samples(sorted(got, key=lambda s: s.key), samples)


def test_webdataset_package_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = make_samples(2, 3)
    summary = webdataset.write(samples, tmp_path / "w", samples_per_shard=4)
    urls = [str(tmp_path / "w" / name) for name in summary.files]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    assert [int(g["cls"]) for g in got] == [s.label for s in samples]
    assert [g["jpg"] for g in got] == [s.jpeg for s in samples]
    assert json.loads(got[1]["json"])["image"] == 1


# --------------------------------------------------------------------------- Parquet


def test_parquet_round_trip_files_and_metadata(tmp_path):
    samples = make_samples(3, 4)
    summary = parquet.write(samples, tmp_path / "p", samples_per_file=5, row_group_size=2)
    assert summary.files == tuple(f"data/train-{i:05d}-of-00003.parquet" for i in range(3))
    got = list(parquet.read(tmp_path / "p"))
    same_samples(got, samples)
    assert got[1].meta["image"] == 1 and got[1].meta["filter_cos"] == 0.5
    assert math.isnan(got[0].meta["filter_cos"])


def test_parquet_loads_with_datasets_as_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    samples = make_samples(2, 3)
    parquet.write(samples, tmp_path / "p")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "p" / "data" / "*.parquet"),
                               split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds["label"] == [s.label for s in samples] and ds["key"] == [s.key for s in samples]
    assert ds["meta_image"] == [s.meta["image"] for s in samples]
    first = ds[0]["image"]
    assert first.size == (112, 112)
    import io

    from PIL import Image

    assert np.array_equal(np.asarray(first), np.asarray(Image.open(io.BytesIO(samples[0].jpeg))))


def test_parquet_refuses_metadata_that_changes_type(tmp_path):
    jpeg = make_samples(1, 1)[0].jpeg
    samples = [Sample(0, "a", jpeg, {"x": 1}), Sample(0, "b", jpeg, {"x": "one"})]
    with pytest.raises(InvalidInputError, match="same metadata"):
        parquet.write(samples, tmp_path / "p", row_group_size=1)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- registry and atomicity


def test_export_formats_writes_every_format_with_matching_counts(tmp_path):
    samples = make_samples(3, 2)
    summaries = export_formats(lambda: iter(samples), tmp_path / "export", list(WRITERS), num_classes=3)
    assert {f: (s.num_samples, s.num_classes) for f, s in summaries.items()} == {f: (6, 3) for f in WRITERS}
    assert len(imagefolder.read(tmp_path / "export" / "imagefolder")) == 6
    assert len(list(webdataset.read(tmp_path / "export" / "webdataset"))) == 6
    assert len(list(parquet.read(tmp_path / "export" / "parquet"))) == 6
    with pytest.raises(InvalidInputError, match="Unknown export format"):
        export_formats(lambda: iter(samples), tmp_path / "other", ["imagefolder", "lmdb"])
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_a_failing_export_leaves_nothing_under_the_final_name(tmp_path, fmt):
    samples = make_samples(2, 3)

    def dying():
        yield from samples[:4]
        raise KeyboardInterrupt  # stands in for a kill in the middle of the export

    with pytest.raises(KeyboardInterrupt):
        WRITERS[fmt](dying(), tmp_path / fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_existing_output_is_kept_unless_overwrite_and_stale_staging_is_cleared(tmp_path, fmt):
    samples = make_samples(2, 2)
    out = tmp_path / fmt
    stale = tmp_path / f".{fmt}.partial-4194305-dead"  # a SIGKILLed export's leftover (pid above any kernel's pid_max: never alive)
    (stale / "sub").mkdir(parents=True)
    WRITERS[fmt](samples, out)
    assert not stale.exists()
    with pytest.raises(OutputPathError, match="already holds files"):
        WRITERS[fmt](samples[:1], out)
    summary = WRITERS[fmt](samples[:1], out, overwrite=True)
    assert summary.num_samples == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [fmt]


# --------------------------------------------------------------------------- manifest


def manifest_rows(n: int, **extra) -> list[dict]:
    return [
        {"identity": i // 2, "image": i % 2, "seed": 7 * i, "condition_cos": 0.9, "filter_cos": None if i == 0 else 0.6,
         "kept": i % 3 != 2, "drop_reason": "" if i % 3 != 2 else "low_similarity",
         "path": f"shards/0/images/{i}.jpg" if i % 3 != 2 else "", **extra}
        for i in range(n)
    ]


def test_manifest_types_nan_and_extra_columns(tmp_path):
    write_manifest(tmp_path / "manifest.parquet", manifest_rows(6, shard=0))
    table = read_manifest(tmp_path / "manifest.parquet")
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {"identity": "int64", "image": "int64", "seed": "int64", "condition_cos": "float",
                     "filter_cos": "float", "kept": "bool", "drop_reason": "string", "path": "string", "shard": "int64"}
    assert math.isnan(table["filter_cos"][0].as_py()) and table["kept"].to_pylist() == [True, True, False] * 2


def test_manifests_concatenate_across_shards(tmp_path):
    write_manifest(tmp_path / "a.parquet", manifest_rows(3, shard=0))
    write_manifest(tmp_path / "b.parquet", manifest_rows(2, shard=1, det_score=0.99))
    table = concat_manifests([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert table.num_rows == 5 and table["shard"].to_pylist() == [0, 0, 0, 1, 1]
    assert table["det_score"].to_pylist() == [None, None, None, 0.99, 0.99]
    assert concat_manifests([]).num_rows == 0


def test_bad_manifests_are_refused(tmp_path):
    rows = manifest_rows(3)
    rows[0]["drop_reason"] = "oops"
    with pytest.raises(InvalidInputError, match="drop_reason"):
        write_manifest(tmp_path / "m.parquet", rows)
    with pytest.raises(InvalidInputError, match="seed"):
        write_manifest(tmp_path / "m.parquet", [{k: v for k, v in r.items() if k != "seed"} for r in manifest_rows(2)])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(FileFormatError):
        read_manifest(tmp_path / "bad.parquet")
    assert not (tmp_path / "m.parquet").exists()


# --------------------------------------------------------------------------- dataset card


def test_card_names_models_licences_counts_and_command(tmp_path):
    yaml = pytest.importorskip("yaml")
    from synthface.weights import licence

    arc = licence("arc2face")
    facts = {
        "name": "hsface-like",
        "models": [{"name": "arc2face", "role": "generator", "licence": arc.text, "restricted": arc.restricted},
                   {"name": "insightface (pack=antelopev2)", "role": "filter / face analysis",
                    "licence": "insightface models: non-commercial research only", "restricted": True}],
        "stats": {"images_kept": 12_000, "identities_kept": 240, "drop_reasons": {"low_similarity": 5}},
        "command": "synthface run pipelines/quickstart.toml", "recipe_toml": 'name = "hsface-like"\n',
    }
    write_card(tmp_path / "README.md", facts)
    text = (tmp_path / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and meta["size_categories"] == ["10K<n<100K"]
    assert meta["license_name"] == "non-commercial-research"
    assert f"| arc2face | generator | {arc.text} |" in body
    assert "| insightface (pack=antelopev2) | filter / face analysis | insightface models: non-commercial" in body
    assert "commercial use is excluded" in body
    assert "- images kept: 12000" in body and "- drop reasons: low_similarity: 5" in body
    assert "synthface run pipelines/quickstart.toml" in body and 'name = "hsface-like"' in body


def test_card_without_restricted_models_says_so_and_unknown_licences_restrict():
    from synthface.weights import licence

    free = [{"name": n, "role": r, "licence": licence(n).text, "restricted": licence(n).restricted}
            for n, r in (("tiny", "generator"), ("dlib", "filter / face analysis"))]
    text = render_card({"models": free, "stats": {"images_kept": 5}})
    assert "non-commercial-research" not in text and "n<1K" in text and "commercial use is excluded" not in text
    unknown = render_card({"models": [*free, {"name": "my-own-model", "role": "generator"}]})
    assert "non-commercial-research" in unknown and "| my-own-model | generator | unknown" in unknown


