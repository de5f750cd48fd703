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
from synthface.export.manifest import MANIFEST_COLUMNS

#: The manifest columns the report cannot do without (the others it reads where present).
REQUIRED_COLUMNS = ("identity", "image", "kept", "drop_reason")
#: The declared manifest columns the report measures, besides the required ones.
OPTIONAL_COLUMNS = tuple(c.name for c in MANIFEST_COLUMNS if c.name not in REQUIRED_COLUMNS
                         and c.name not in ("round", "target_cos", "unit", "target_yaw", "target_pitch", "label",
                                                "negative_identity"))


@dataclass
class Run:
    """A run folder's contents: manifest columns as numpy arrays, embeddings (M, D) (a memory map, or
    computed by `embed_kept_images`)."""

    root: Path
    columns: dict[str, np.ndarray]
    embeddings: np.ndarray
    ids: np.ndarray  # (identities, D) the run's identity bank (a memory map)
    embedded_by: str = ""  # the analyser that embedded the kept images, when the run had no embeddings
    no_faces: str = ""  # why no face measure can be made (the analyser found no face in any kept image)
    ids_path: Path | None = None  # the identities file `ids` was read from

    @property
    def identity(self) -> np.ndarray:
        return self.columns["identity"]

    @property
    def kept(self) -> np.ndarray:
        return self.columns["kept"]

    def __len__(self) -> int:
        return int(self.identity.shape[0])


def load_run(root: str | Path, analyzer=None) -> Run:
    """Open a finished run folder (names from runfolder.RunLayout). A run made with filtering off has no
    face embeddings; its kept images are then embedded with `analyzer` (required then: a
    FileFormatError says so otherwise) and `Run.embedded_by` names it. When the analyser finds no
    face in any kept image (random weights), `Run.no_faces` says so and the face measures are
    skipped. A missing or damaged identities file is a FileFormatError."""
    from synthface.runfolder import RunLayout

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
    embedded_by, no_faces = "", ""
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
            # Nothing to measure faces on; what needs no face (counts, the bank, the contact sheet) still is.
            no_faces = (
                f"{analyzer.name} found no face in any of the {int(kept.sum())} kept images (a run on random weights, "
                "such as the smoke recipe, draws no faces)"
            )
        elif faceless.any():
            # The report measures faces: kept images in which the analyser finds none are left out, and said so.
            columns = {**columns, "kept": kept & ~faceless}
            embedded_by += f" (no face in {int(faceless.sum())} of {int(kept.sum())} kept images: left out)"
    if not layout.identities.is_file():
        raise FileFormatError(
            f"{layout.identities} is missing: a run folder keeps the identity bank its images were rendered from, "
            "and the report measures it. Put the file back (copy it from where the run was made), or rerun the "
            "recipe into this folder with `synthface run RECIPE --out RUN`, which resumes and rewrites it."
        )
    ids = np.asarray(map_tensor(layout.identities, "ids"), dtype=np.float32)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise FileFormatError(
            f"{layout.identities} holds ids of shape {ids.shape}; an identity bank is (identities, D) vectors. "
            "The file is damaged: rerun the recipe into this folder (synthface run RECIPE --out RUN)."
        )
    return Run(root=root, columns=columns, embeddings=embeddings, ids=ids, embedded_by=embedded_by,
               no_faces=no_faces, ids_path=layout.identities)


def embedding_width(root: str | Path, analyzer=None) -> tuple[int, str]:
    """(width, what gives it) of the embeddings the report will measure in run folder `root`: the
    stored ones' (the run's filter analyser), or for a run without them `analyzer`'s descriptor.
    Only file headers are read, so a reference of another width is refused before any work."""
    from synthface.runfolder import RunLayout

    layout = RunLayout(Path(root))
    if not layout.root.is_dir():
        raise FileFormatError(f"{layout.root} is not a folder. Pass the run folder that holds {layout.MANIFEST}.")
    width = int(map_tensor(layout.embeddings, "embeddings").shape[-1])
    if width == 0 and analyzer is not None:
        return int(analyzer.embedding_dim), f"{analyzer.name}'s descriptors, which embed this run's kept images"
    return width, "the face embeddings its filter stored"


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


def _header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file; FileFormatError when it is missing or unreadable."""
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist; a run folder holds it once the run is finalized.")
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not a readable safetensors file ({exc}); it may be truncated.") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path} is not a readable safetensors file (its header is not a mapping).")
    return size, header


def tensor_names(path: Path) -> list[str]:
    """The names of the tensors in a safetensors file (its header only is read)."""
    return sorted(k for k in _header(path)[1] if k != "__metadata__")


def map_tensor(path: Path, name: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file (read-only); bfloat16 and others are loaded and cast."""
    size, header = _header(path)
    entry = header.get(name)
    if entry is None:
        raise FileFormatError(f"{path} has no tensor named {name!r} (it holds {', '.join(tensor_names(path)) or 'none'}).")
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
