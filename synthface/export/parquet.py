"""Parquet files `data/train-00000-of-0000N.parquet` that `datasets.load_dataset("parquet", ...)` opens as images.

Columns: `image` as the Hugging Face Image layout (struct {bytes, path}), `label` int64, `key`, then
one column per metadata field (types from the first samples; a field named like a
reserved column, such as the image index `image`, becomes `meta_image`). The schema carries the `huggingface`
metadata naming `image` an Image feature, so `datasets` decodes it to PIL images without a script.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import ExportSummary, Sample, SampleChecker, staged_dir

FEATURES = {
    "image": {"_type": "Image"},
    "label": {"dtype": "int64", "_type": "Value"},
    "key": {"dtype": "string", "_type": "Value"},
}
RESERVED = ("image", "label", "key")
META_PREFIX = "meta_"  # a metadata field named like a reserved column (e.g. the image index "image") gets it


def column_name(meta_field: str) -> str:
    return META_PREFIX + meta_field if meta_field in RESERVED else meta_field


def meta_field(column: str) -> str:
    bare = column.removeprefix(META_PREFIX)
    return bare if bare in RESERVED else column


def _base_fields():
    import pyarrow as pa

    return [
        pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        pa.field("label", pa.int64()),
        pa.field("key", pa.string()),
    ]


def _rows(batch: list[Sample]) -> list[dict]:
    rows = []
    for s in batch:
        meta = {column_name(k): (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.meta.items()}  # NaN stays NaN
        rows.append({"image": {"bytes": bytes(s.jpeg), "path": f"{s.key}.jpg"}, "label": s.label, "key": s.key, **meta})
    return rows


def _schema(rows: list[dict]):
    import pyarrow as pa

    inferred = pa.Table.from_pylist(rows).schema
    fields = _base_fields() + [f for f in inferred if f.name not in RESERVED]
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in fields]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})


def write(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    num_classes: int | None = None,
    samples_per_file: int = 50_000,
    row_group_size: int = 500,
    overwrite: bool = False,
) -> ExportSummary:
    """Files of at most `samples_per_file` rows in row groups of `row_group_size` (small groups keep
    image datasets quick to page through)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if samples_per_file < 1 or row_group_size < 1:
        raise InvalidInputError("samples_per_file and row_group_size must be at least 1.")
    checker = SampleChecker(num_classes)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "data").mkdir()
        parts: list[Path] = []
        writer = None
        schema = None
        in_file = 0
        try:
            for batch in _batches(checker(samples), row_group_size):
                rows = _rows(batch)
                schema = schema or _schema(rows)
                if writer is None or in_file + len(rows) > samples_per_file:
                    if writer is not None:
                        writer.close()
                    parts.append(tmp / "data" / f"part-{len(parts):05d}.parquet")
                    writer, in_file = pq.ParquetWriter(parts[-1], schema), 0
                try:
                    table = pa.Table.from_pylist(rows, schema=schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise InvalidInputError(
                        f"Sample metadata changed type or fields between samples ({exc}); every sample needs the "
                        "same metadata fields with the same types."
                    ) from None
                writer.write_table(table, row_group_size=row_group_size)
                in_file += len(rows)
            if writer is None:  # no samples: still one valid, empty file
                parts.append(tmp / "data" / "part-00000.parquet")
                pq.write_table(pa.Table.from_pylist([], schema=_schema([])), parts[-1])
        finally:
            if writer is not None:
                writer.close()
        names = []
        for i, part in enumerate(parts):
            names.append(f"data/train-{i:05d}-of-{len(parts):05d}.parquet")
            os.replace(part, tmp / names[-1])
    return ExportSummary("parquet", out_dir, checker.count, checker.classes, tuple(names))


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read(folder: str | Path) -> Iterator[Sample]:
    """Every row as a Sample (metadata = the non-reserved columns), file by file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob("data/train-*.parquet"))
    if not files:
        raise FileFormatError(f"{folder} holds no data/train-*.parquet files; it is not a synthface Parquet export.")
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileFormatError(f"{path} is not a readable Parquet file ({exc}); it is truncated or corrupt.") from None
        for batch in pf.iter_batches():
            for row in batch.to_pylist():
                image = row.pop("image")
                label, key = row.pop("label"), row.pop("key")
                yield Sample(label, key, image["bytes"], {meta_field(k): v for k, v in row.items()})
