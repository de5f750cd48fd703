"""`manifest.parquet`: one row per candidate image, kept or dropped, with the reason.

Required columns and types are fixed (below); extra columns pass through with inferred types.
`filter_cos` is NaN when no filter ran; `drop_reason` is empty exactly when the image was kept;
`path` is where the kept image lies, relative to the run folder (empty for dropped images).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.io import atomic_path

COLUMNS = {
    "identity": "int64",
    "image": "int64",
    "seed": "int64",
    "condition_cos": "float32",
    "filter_cos": "float32",
    "kept": "bool",
    "drop_reason": "string",
    "path": "string",
}


def schema_for(table):
    """The manifest schema: required columns first with their fixed types, then the extras as they are."""
    import pyarrow as pa

    fields = [pa.field(name, getattr(pa, "bool_" if kind == "bool" else kind)()) for name, kind in COLUMNS.items()]
    return pa.schema(fields + [f for f in table.schema if f.name not in COLUMNS])


def manifest_table(rows: Iterable[dict] | object):
    """Rows (dicts) or a pyarrow Table -> a checked Table in the manifest schema."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(rows, pa.Table):
        table = rows
    else:
        rows = [{**r, "filter_cos": math.nan if r.get("filter_cos") is None else r["filter_cos"]} for r in rows]
        table = pa.Table.from_pylist(rows) if rows else pa.schema([]).empty_table()
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing and table.num_rows:
        raise InvalidInputError(f"Manifest rows lack the column(s) {', '.join(missing)}; every row needs {', '.join(COLUMNS)}.")
    if not table.num_rows and missing:
        return schema_for(table).empty_table()
    schema = schema_for(table)
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InvalidInputError(f"A manifest column has the wrong type ({exc}); expected {COLUMNS}.") from None
    table = table.set_column(table.schema.get_field_index("filter_cos"), "filter_cos", pc.fill_null(table["filter_cos"], math.nan))
    for name in ("identity", "image", "seed", "kept", "drop_reason", "path", "condition_cos"):
        if table[name].null_count:
            raise InvalidInputError(f"The manifest column {name!r} has {table[name].null_count} empty values; it must be filled in every row.")
    kept, empty = table["kept"], pc.equal(table["drop_reason"], "")
    if not pc.all(pc.equal(kept, empty)).as_py():
        raise InvalidInputError("In the manifest, drop_reason must be empty exactly for kept rows and name the reason for dropped ones.")
    return table


def write_manifest(path: str | Path, rows) -> Path:
    """Check `rows` and write them atomically as Parquet."""
    import pyarrow.parquet as pq

    table = manifest_table(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_manifest(path: str | Path):
    """The manifest as a pyarrow Table (checked)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist; a finished run writes its manifest there.")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path} is not a readable Parquet file ({exc}); it is truncated or corrupt.") from None
    try:
        return manifest_table(table)
    except InvalidInputError as exc:
        raise FileFormatError(f"{path} is not a synthface manifest: {exc}") from None


def concat_manifests(paths: Sequence[str | Path]):
    """Per-shard manifests, in the given order, as one Table (extra columns unified, missing ones null)."""
    import pyarrow as pa

    tables = [read_manifest(p) for p in paths]
    if not tables:
        return manifest_table([])
    return manifest_table(pa.concat_tables(tables, promote_options="permissive"))
