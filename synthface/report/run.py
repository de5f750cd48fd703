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

from synthface.errors import FileFormatError, NoFaceError

REQUIRED_COLUMNS = ("identity", "image", "kept", "drop_reason")
OPTIONAL_COLUMNS = ("seed", "condition_cos", "filter_cos", "path", "det_score", "yaw", "pitch", "roll", "quality",
                    "vector_round")


@dataclass
class Run:
    """A run folder's contents: manifest columns as numpy arrays, embeddings (M, D) (a memory map, or
    computed by `embed_kept_images`)."""

    root: Path
    columns: dict[str, np.ndarray]
    embeddings: np.ndarray
    ids: np.ndarray | None
    embedded_by: str = ""  # the analyser that embedded the kept images, when the run had no embeddings

    @property
    def identity(self) -> np.ndarray:
        return self.columns["identity"]

    @property
    def kept(self) -> np.ndarray:
        return self.columns["kept"]

    def __len__(self) -> int:
        return int(self.identity.shape[0])


def load_run(root: str | Path, analyzer=None) -> Run:
    """Open a finished run folder (names from engine.RunLayout). A run made with filtering off has no
    face embeddings; its kept images are then embedded with `analyzer` (required then: a
    FileFormatError says so otherwise) and `Run.embedded_by` names it."""
    from synthface.engine import RunLayout

    layout = RunLayout(Path(root))
    root = layout.root
    if not root.is_dir():
        raise FileFormatError(f"{root} is not a folder. Pass the run folder that holds {layout.MANIFEST}.")
    columns = manifest_columns(layout.manifest)
    embeddings = map_tensor(layout.embeddings, "embeddings")
    if embeddings.ndim != 2 or embeddings.shape[0] != columns["identity"].shape[0]:
        raise FileFormatError(
            f"{layout.embeddings} holds embeddings of shape {embeddings.shape} but {layout.MANIFEST} has "
            f"{columns['identity'].shape[0]} rows; they must be (rows, D) in manifest order. The run may be "
            "unfinished: finalize it first."
        )
    embedded_by = ""
    if embeddings.shape[1] == 0:
        if analyzer is None:
            raise FileFormatError(
                f"{root} holds no face embeddings: its recipe ran with filtering off, so no recogniser looked at "
                "the images. Pass a face analyser to embed its kept images (synthface report --analyzer NAME)."
            )
        embeddings = embed_kept_images(root, columns, analyzer)
        embedded_by = analyzer.name
        kept = np.asarray(columns["kept"], dtype=bool)
        faceless = kept & ~np.isfinite(embeddings).all(axis=1)
        if kept.any() and faceless.all(where=kept):
            raise NoFaceError(
                f"{analyzer.name} found no face in any of the {int(kept.sum())} kept images of {root}, so there is "
                "nothing to measure (a run on random weights, such as the smoke recipe, draws no faces). Report a run "
                "of a real model, or try another --analyzer."
            )
        if faceless.any():
            # The report measures faces: kept images in which the analyser finds none are left out, and said so.
            columns = {**columns, "kept": kept & ~faceless}
            embedded_by += f" (no face in {int(faceless.sum())} of {int(kept.sum())} kept images: left out)"
    ids = None
    if layout.identities.exists():
        ids = np.asarray(map_tensor(layout.identities, "ids"), dtype=np.float32)
    return Run(root=root, columns=columns, embeddings=embeddings, ids=ids, embedded_by=embedded_by)


def embed_kept_images(root: Path, columns: dict[str, np.ndarray], analyzer, batch: int = 32) -> np.ndarray:
    """(M, D) embeddings of the run's kept images by `analyzer` (largest face); NaN rows for dropped
    images and for kept ones in which it finds no face."""
    from synthface.faces import load_image

    out = np.full((columns["identity"].shape[0], analyzer.embedding_dim), np.nan, dtype=np.float32)
    rows = np.flatnonzero(columns["kept"])
    for lo in range(0, rows.size, batch):
        chunk = rows[lo : lo + batch]
        found = analyzer.analyze([load_image(root / columns["path"][i]) for i in chunk])
        for i, faces in zip(chunk, found):
            if faces:
                out[i] = faces[0].embedding
    return out


def manifest_columns(path: Path) -> dict[str, np.ndarray]:
    """The report's view of a manifest: the columns it reads as numpy arrays (strings as object
    arrays), the required ones checked. (synthface.export.read_manifest is the whole checked table.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileFormatError(f"{path} does not exist. A run folder needs its manifest, one row per candidate image.")
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
