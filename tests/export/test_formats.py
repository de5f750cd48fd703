"""ImageFolder, WebDataset and Parquet exports, the FORMATS registry (detect, open), and the
atomic-output guarantee every writer shares."""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest

from synthface.errors import InvalidInputError, OutputPathError
from synthface.export import FORMATS, Sample, detect_format, export_formats, imagefolder, parquet, webdataset
from tests.helpers.export_samples import make_samples


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
    summaries = export_formats(lambda: iter(samples), tmp_path / "export", list(FORMATS), num_classes=3)
    assert {f: (s.num_samples, s.num_classes) for f, s in summaries.items()} == {f: (6, 3) for f in FORMATS}
    assert len(imagefolder.read(tmp_path / "export" / "imagefolder")) == 6
    assert len(list(webdataset.read(tmp_path / "export" / "webdataset"))) == 6
    assert len(list(parquet.read(tmp_path / "export" / "parquet"))) == 6
    with pytest.raises(InvalidInputError, match="Unknown export format"):
        export_formats(lambda: iter(samples), tmp_path / "other", ["imagefolder", "lmdb"])
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_detects_its_folder_and_opens_it_in_write_order(tmp_path, fmt):
    samples = make_samples(3, 2)
    FORMATS[fmt].write(samples, tmp_path / fmt, **({"shuffle": False} if fmt == "recordio" else {}))
    assert detect_format(tmp_path / fmt) == fmt
    assert [other for other in FORMATS if other != fmt and FORMATS[other].detect(tmp_path / fmt)] == []
    source = FORMATS[fmt].open(tmp_path / fmt)
    assert source.fmt == fmt and len(source) == 6 and source.num_classes == 3
    assert [source.read(i) for i in range(len(source))] == [(s.jpeg, s.label) for s in samples]
    assert source.labels.tolist() == [s.label for s in samples]


def test_the_registry_refuses_a_second_format_of_one_name_and_unknown_names():
    from synthface.export import get_format, register_format

    with pytest.raises(InvalidInputError, match="registered already"):
        register_format(FORMATS["parquet"])
    with pytest.raises(InvalidInputError, match="Unknown export format 'lmdb'; choose from recordio, imagefolder"):
        get_format("lmdb")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_failing_export_leaves_nothing_under_the_final_name(tmp_path, fmt):
    samples = make_samples(2, 3)

    def dying():
        yield from samples[:4]
        raise KeyboardInterrupt  # stands in for a kill in the middle of the export

    with pytest.raises(KeyboardInterrupt):
        FORMATS[fmt].write(dying(), tmp_path / fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_existing_output_is_kept_unless_overwrite_and_stale_staging_is_cleared(tmp_path, fmt):
    samples = make_samples(2, 2)
    out = tmp_path / fmt
    stale = tmp_path / f".{fmt}.partial-4194305-dead"  # a SIGKILLed export's leftover (pid above any kernel's pid_max: never alive)
    (stale / "sub").mkdir(parents=True)
    FORMATS[fmt].write(samples, out)
    assert not stale.exists()
    with pytest.raises(OutputPathError, match="already holds files"):
        FORMATS[fmt].write(samples[:1], out)
    summary = FORMATS[fmt].write(samples[:1], out, overwrite=True)
    assert summary.num_samples == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [fmt]
