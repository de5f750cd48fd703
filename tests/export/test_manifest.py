"""The manifest: one row per candidate, typed columns, concatenation across shards, refusals."""

from __future__ import annotations

import math

import pytest

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export import concat_manifests, read_manifest, write_manifest


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


def test_every_column_is_declared_once_and_rows_are_built_against_the_declaration():
    from synthface.export.manifest import COLUMNS, MANIFEST_COLUMNS, manifest_row

    names = [c.name for c in MANIFEST_COLUMNS]
    assert len(names) == len(set(names)) and all(c.meaning for c in MANIFEST_COLUMNS)
    assert list(COLUMNS) == [c.name for c in MANIFEST_COLUMNS if c.required]
    required = {"identity": 1, "image": 2, "seed": 3, "condition_cos": 1.0, "filter_cos": 0.5, "kept": True,
                "drop_reason": "", "path": "p.jpg"}
    row = manifest_row(quality=0.5, **required)
    assert list(row) == [n for n in names if n in row]  # declared order, whatever the call's
    with pytest.raises(ValueError, match="undeclared"):
        manifest_row(colour="red", **required)
    with pytest.raises(ValueError, match="missing required"):
        manifest_row(identity=1)


def test_attribute_columns_are_declared_with_the_analysers_names_and_round_trip(tmp_path):
    from synthface.export.manifest import MANIFEST_COLUMNS, manifest_row
    from synthface.faces.attributes import FIELDS

    declared = {c.name: c for c in MANIFEST_COLUMNS}
    assert all(name in declared and not declared[name].required for name in FIELDS)
    rows = [manifest_row(**{k: v for k, v in r.items()}, age=age, age_confidence=0.7, gender=gender,
                         gender_confidence=conf)
            for r, (age, gender, conf) in zip(manifest_rows(3), [(31.5, "female", 0.9), (float("nan"), "", float("nan")),
                                                                 (64.0, "male", 0.6)])]
    write_manifest(tmp_path / "manifest.parquet", rows)
    table = read_manifest(tmp_path / "manifest.parquet")
    assert {f.name: str(f.type) for f in table.schema if f.name in FIELDS} == {
        "age": "double", "age_confidence": "double", "gender": "string", "gender_confidence": "double"}
    assert table["gender"].to_pylist() == ["female", "", "male"]
    assert table["age"][0].as_py() == 31.5 and math.isnan(table["age"][1].as_py())
