"""`manifest.parquet`: one row per candidate image, kept or dropped, with the reason.

Every column is declared once, here (`MANIFEST_COLUMNS`: name, type, meaning); the engine builds its
rows against them (`manifest_row`) and the report reads them. The required ones are in every manifest,
first and with their fixed types; the others follow in declared order where a run writes them, and
undeclared extras pass through with inferred types. `filter_cos` is NaN when no filter ran;
`drop_reason` is empty exactly when the image was kept; `path` is where the kept image lies,
relative to the run folder (empty for dropped images).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.io import atomic_path


@dataclass(frozen=True)
class Column:
    """One manifest column: its name, its pyarrow type, what it means, and whether every manifest has it."""

    name: str
    type: str
    meaning: str
    required: bool = False


MANIFEST_COLUMNS = (
    Column("identity", "int64", "the identity's index in the bank", True),
    Column("image", "int64", "the image's index within its identity (names its file and seed)", True),
    Column("seed", "int64", "the image's seed, derived from (recipe seed, identity, image)", True),
    Column("condition_cos", "float32", "cosine of the condition vector rendered to the identity's vector", True),
    Column("filter_cos", "float32", "cosine in the filter space to the ID vector or class centre (NaN: no filter)",
           True),
    Column("kept", "bool", "whether the image is in the dataset", True),
    Column("drop_reason", "string", "empty when kept, else one of synthface.filtering.DROP_REASONS", True),
    Column("path", "string", "the kept image's file, relative to the run folder (empty when dropped)", True),
    Column("round", "int64", "the identity's rendering round over all its vectors"),
    Column("vector_round", "int64", "which vector it was rendered from: 0 the sampled one, r collision round r's"),
    Column("target_cos", "double", "the planned cosine of the condition vector to the identity's vector (bounded "
           "perturbation: the one drawn in [lb, max_cos])"),
    Column("det_score", "double", "the face detector's score (NaN: no face or no analyser)"),
    Column("yaw", "double", "head yaw in degrees from the five landmarks (NaN: no face)"),
    Column("pitch", "double", "head pitch in degrees (NaN: no face)"),
    Column("roll", "double", "head roll in degrees (NaN: no face)"),
    Column("quality", "double", "image quality in [0, 1] (NaN: no face or no analyser)"),
    Column("unit", "string", "the unit of work that rendered it (shard-NNNNNN or resample-NN)"),
    Column("target_yaw", "double", "the planned yaw in degrees (only with variation.pose)"),
    Column("target_pitch", "double", "the planned pitch in degrees (only with variation.pose)"),
    Column("negative_identity", "int64", "the identity whose vector steered it away, NegFaceDiff's negative, as "
           "the set stood when it was rendered (only with generation.sampler.negative)"),
    Column("age", "double", "apparent age in years (only with filtering.attributes; NaN: no face)"),
    Column("age_confidence", "double", "the age model's largest class probability, in [0, 1] (only with "
           "filtering.attributes; NaN: no face)"),
    Column("gender", "string", "apparent gender, \"female\" or \"male\" (only with filtering.attributes; empty: no "
           "face)"),
    Column("gender_confidence", "double", "the probability of `gender`, in [0.5, 1] (only with filtering.attributes; "
           "NaN: no face)"),
    Column("label", "int64", "the class label in the exports (-1: dropped); written by finalize"),
)

#: The columns every manifest has, with their fixed types.
COLUMNS = {c.name: c.type for c in MANIFEST_COLUMNS if c.required}
_TYPES = {c.name: c.type for c in MANIFEST_COLUMNS}


def manifest_row(**values) -> dict:
    """One manifest row from its values, in declared column order; a name that is not a declared
    column, or a required column left out, is a ValueError (a bug in the writer, not in the data)."""
    unknown = sorted(set(values) - set(_TYPES))
    missing = [name for name in COLUMNS if name not in values]
    if unknown or missing:
        raise ValueError(f"manifest row: undeclared column(s) {unknown}, missing required column(s) {missing}")
    return {c.name: values[c.name] for c in MANIFEST_COLUMNS if c.name in values}


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
