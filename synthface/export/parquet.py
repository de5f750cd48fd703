"""Parquet files `data/train-00000-of-0000N.parquet` that `datasets.load_dataset("parquet", ...)` opens as images.

Columns: `image` as the Hugging Face Image layout (struct {bytes, path}), `label` int64, `key`, then
one column per metadata field (types from the first samples; a field named like a
reserved column, such as the image index `image`, becomes `meta_image`). The schema carries the `huggingface`
metadata naming `image` an Image feature, so `datasets` decodes it to PIL images without a script.
`open(folder)` reads images back by index, row group by row group on demand through a small
per-process cache (the slowest format for shuffled access: prefer RecordIO for long training runs).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import ExportFormat, ExportReader, ExportSummary, Sample, SampleChecker, staged_dir

DATA_DIR = "data"
FILE_PATTERN = "train-{index:05d}-of-{count:05d}.parquet"
FILE_GLOB = f"{DATA_DIR}/train-*.parquet"

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
        (tmp / DATA_DIR).mkdir()
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
                    parts.append(tmp / DATA_DIR / f"part-{len(parts):05d}.parquet")
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
                parts.append(tmp / DATA_DIR / "part-00000.parquet")
                pq.write_table(pa.Table.from_pylist([], schema=_schema([])), parts[-1])
        finally:
            if writer is not None:
                writer.close()
        names = []
        for i, part in enumerate(parts):
            names.append(f"{DATA_DIR}/" + FILE_PATTERN.format(index=i, count=len(parts)))
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

    files = sorted(Path(folder).glob(FILE_GLOB))
    if not files:
        raise FileFormatError(f"{folder} holds no {FILE_GLOB} files; it is not a synthface Parquet export.")
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


class ParquetSource(ExportReader):
    """The images of a Parquet export by index: labels read column by column (integers required), images
    row group by row group on demand, the last CACHED_GROUPS groups kept per process."""

    fmt = "parquet"
    CACHED_GROUPS = 8

    def __init__(self, folder: Path):
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files = sorted(Path(folder).glob(FILE_GLOB))
        where, labels = [], []
        for f, path in enumerate(self.files):
            try:
                meta = pq.ParquetFile(path)
                for g in range(meta.num_row_groups):
                    group = meta.read_row_group(g, columns=["label"]).column("label").to_numpy()
                    if not np.issubdtype(group.dtype, np.integer):
                        raise FileFormatError(f"{path} row group {g} has {group.dtype} labels, not integers; a synthface "
                                              "Parquet export stores class numbers. Export the run again.")
                    labels.append(group)
                    where.append(np.stack([np.full(len(group), f), np.full(len(group), g), np.arange(len(group))], 1))
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise FileFormatError(f"{path} is not a readable synthface Parquet file ({exc}); it is truncated or corrupt.") from None
        self.where_ = np.concatenate(where).astype(np.int64) if where else np.zeros((0, 3), np.int64)
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self._groups: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_groups"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        f, g, row = (int(x) for x in self.where_[i])
        return f"Row {row} of row group {g} of {self.files[f]}"

    def read(self, i: int) -> tuple[bytes, int]:
        import pyarrow.parquet as pq

        f, g, row = (int(x) for x in self.where_[i])
        images = self._groups.get((f, g))
        if images is None:
            table = pq.ParquetFile(self._handle(self.files[f])).read_row_group(g, columns=["image"])
            images = table.column("image").combine_chunks().field("bytes")
            self._groups[(f, g)] = images
            if len(self._groups) > self.CACHED_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end((f, g))
        return images[row].as_py(), int(self.labels[i])


def detect(folder: Path) -> bool:
    return any(Path(folder).glob(FILE_GLOB))


FORMAT = ExportFormat(
    name="parquet", files=(f"{DATA_DIR}/{FILE_PATTERN}",), signature=FILE_GLOB,
    write=write, detect=detect, open=ParquetSource,
)
