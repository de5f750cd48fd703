"""Reading a run folder: manifest.parquet, embeddings.safetensors (memory-mapped), identities.safetensors.

The embeddings file can be larger than memory (100K identities x 50 images x 512 floats is 10 GB),
so it is mapped, never loaded: the report reads it in bounded chunks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError

MANIFEST = "manifest.parquet"
EMBEDDINGS = "embeddings.safetensors"
IDENTITIES = "identities.safetensors"
REQUIRED_COLUMNS = ("identity", "image", "kept", "drop_reason")
OPTIONAL_COLUMNS = ("seed", "condition_cos", "filter_cos", "path", "det_score", "yaw", "pitch", "roll")


@dataclass
class Run:
    """A run folder's contents: manifest columns as numpy arrays, embeddings (M, D) (a memory map)."""

    root: Path
    columns: dict[str, np.ndarray]
    embeddings: np.ndarray
    ids: np.ndarray | None

    @property
    def identity(self) -> np.ndarray:
        return self.columns["identity"]

    @property
    def kept(self) -> np.ndarray:
        return self.columns["kept"]

    def __len__(self) -> int:
        return int(self.identity.shape[0])


def load_run(root: str | Path) -> Run:
    """Open a run folder written by the engine (or by hand, in the same layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileFormatError(f"{root} is not a folder. Pass the run folder that holds {MANIFEST} and {EMBEDDINGS}.")
    columns = read_manifest(root / MANIFEST)
    embeddings = map_tensor(root / EMBEDDINGS, "embeddings")
    if embeddings.ndim != 2 or embeddings.shape[0] != columns["identity"].shape[0]:
        raise FileFormatError(
            f"{root / EMBEDDINGS} holds embeddings of shape {embeddings.shape} but {MANIFEST} has "
            f"{columns['identity'].shape[0]} rows; they must be (rows, D) in manifest order. The run may be "
            "unfinished: finalize it first."
        )
    if embeddings.ndim == 2 and embeddings.shape[1] == 0:
        raise FileFormatError(
            f"{root} holds no face embeddings: its recipe ran with filtering off, so no recogniser looked at "
            "the images (the smoke recipe does this, since random weights draw no faces). The report measures "
            "identities through a recogniser; make the run with [filtering] enabled = true."
        )
    ids = None
    if (root / IDENTITIES).exists():
        ids = np.asarray(map_tensor(root / IDENTITIES, "ids"), dtype=np.float32)
    return Run(root=root, columns=columns, embeddings=embeddings, ids=ids)


def read_manifest(path: Path) -> dict[str, np.ndarray]:
    """Manifest columns as numpy arrays (strings as object arrays); checks the required ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileFormatError(f"{path} does not exist. A run folder needs {MANIFEST}, one row per candidate image.")
    try:
        schema = pq.read_schema(path)
        wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in schema.names]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path} is not a readable Parquet file ({exc}); it may be truncated.") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise FileFormatError(f"{path} lacks the column(s) {', '.join(missing)}; the manifest needs {', '.join(REQUIRED_COLUMNS)}.")
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    if not np.issubdtype(out["identity"].dtype, np.integer):
        raise FileFormatError(f"{path}: column identity must be integers, got {out['identity'].dtype}.")
    out["identity"] = out["identity"].astype(np.int64)
    out["kept"] = out["kept"].astype(bool)
    return out


_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def map_tensor(path: Path, name: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file (read-only); bfloat16 and others are loaded and cast."""
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist; a run folder holds it once the run is finalized.")
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not a readable safetensors file ({exc}); it may be truncated.") from None
    entry = header.get(name)
    if entry is None:
        names = sorted(k for k in header if k != "__metadata__")
        raise FileFormatError(f"{path} has no tensor named {name!r} (it holds {', '.join(names) or 'none'}).")
    shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
    if 8 + size + end > path.stat().st_size:
        raise FileFormatError(f"{path} is shorter than its header says; it is truncated. Write it again.")
    if entry["dtype"] in _DTYPES:
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=_DTYPES[entry["dtype"]])
        return np.memmap(path, dtype=_DTYPES[entry["dtype"]], mode="r", offset=8 + size + begin, shape=shape)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name).float().numpy()
