"""The identity bank: `IdentityBank` (unit vectors plus how they were made) and its file format,
safetensors with the vectors as tensor `ids` (`IdentityBank.save`, `load_bank`), plus
`load_vectors` for plain (N, D) arrays from `.npy` or `.safetensors`."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthface import __version__
from synthface.errors import FileFormatError, InvalidInputError
from synthface.identity._vectors import bank_problem, check_vectors, normalise_rows
from synthface.identity.prior import PRIORS, Prior, isotropic_prior
from synthface.identity.separation import Verification, check_bins, summarise
from synthface.io import atomic_path, check_output_path

BANK_FORMAT = "synthface.identity_bank"  # metadata 'format' of a saved bank


@dataclass
class IdentityBank:
    """N unit-norm float32 identity vectors plus how they were made.

    `nearest_cos`, when known (banks from `sample_identities`, and files they were saved to), is
    each vector's exact float32 cosine to its nearest neighbour in the bank (NaN for a bank of one).
    """

    vectors: np.ndarray  # (N, D) float32, unit norm
    prior: Prior
    max_cos: float | None = None
    seed: int | None = None
    exclude_max_cos: float | None = None
    num_excluded: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    nearest_cos: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def separation(self, bins: int = 40) -> Verification | None:
        """The recorded nearest-neighbour cosines as a `Verification` (exact max pairwise cosine and
        histogram, no products computed), or None for a bank without them (e.g. imported vectors)."""
        if self.nearest_cos is None:
            return None
        check_bins(bins)
        return summarise(self.nearest_cos, bins, 0.0)

    def save(self, path: str | Path) -> Path:
        """Write `ids` (N, D) float32, the recorded `nearest_cos` and the prior as safetensors,
        atomically, straight from the arrays (no serialised copy of the bank in memory). Vectors that
        are not finite unit rows (norm within UNIT_ATOL of 1) are an InvalidInputError; nothing is written."""
        problem = bank_problem(np.asarray(self.vectors))
        if problem:
            raise InvalidInputError(
                f"Cannot save the identity bank: its vectors (tensor 'ids') {problem}, and a bank holds finite unit "
                "vectors. " + ("Remove or replace those rows" if "NaN" in problem else "Normalise them first (vectors"
                " / numpy.linalg.norm(vectors, axis=1, keepdims=True))") + "; nothing was written."
            )
        path = check_output_path(path)
        meta = {
            "format": BANK_FORMAT,
            "version": __version__,
            "prior": self.prior.name,
            "dim": str(self.dim),
            "count": str(len(self)),
            "max_cos": "" if self.max_cos is None else repr(float(self.max_cos)),
            "seed": "" if self.seed is None else str(self.seed),
            "exclude_max_cos": "" if self.exclude_max_cos is None else repr(self.exclude_max_cos),
            "num_excluded": str(self.num_excluded),
        }
        if self.prior.shrinkage is not None:
            meta["prior_shrinkage"] = repr(self.prior.shrinkage)
        meta.update(self.metadata)
        tensors = {"ids": self.vectors, **self.prior.tensors()}
        if self.nearest_cos is not None:
            tensors["nearest_cos"] = self.nearest_cos
        return write_safetensors(path, tensors, meta)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> Path:
    """Float32 `tensors` as safetensors, written from the arrays themselves in the canonical layout of
    `synthface.io.safetensors_bytes` (tensors in name order, header keys sorted), atomically."""
    arrays = {name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in sorted(tensors)}
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for array in arrays.values():
                data = memoryview(array.reshape(-1)).cast("B")
                for start in range(0, len(data), 1 << 28):  # a single write() moves at most ~2 GB
                    handle.write(data[start : start + (1 << 28)])
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def load_bank(path: str | Path) -> IdentityBank:
    """Load a bank saved by `IdentityBank.save`, or import an (N, D) `.npy` array of vectors."""
    path = Path(path)
    if path.suffix == ".npy":
        vectors = normalise_rows(load_vectors(path))
        return IdentityBank(vectors, isotropic_prior(vectors.shape[1]), metadata={"imported_from": path.name})
    tensors, meta = read_safetensors(path)
    if "ids" not in tensors:
        raise FileFormatError(
            f"{path} holds no tensor named 'ids' (found: {', '.join(sorted(tensors)) or 'none'}). "
            "An identity bank is written by `synthface ids sample`; to import raw vectors, save "
            "them as an (N, D) .npy file."
        )
    raw = tensor_array(tensors["ids"])
    vectors = raw if raw.dtype.kind == "f" else check_vectors(f"{path}: ids", raw)  # names complex, bool, ...
    problem = bank_problem(vectors)
    if problem:
        raise FileFormatError(
            f"{path}: the identity vectors (tensor 'ids') {problem}, and a saved bank holds unit vectors, so the "
            "file is damaged or was edited. Sample the bank again with `synthface ids sample`, or import raw "
            "vectors as an (N, D) .npy array (normalised on import)."
        )
    vectors = vectors.astype(np.float32, copy=False)
    dim = vectors.shape[1]
    prior_name = meta.get("prior") or "isotropic"
    if prior_name not in PRIORS:
        raise _bad_metadata(path, "prior", prior_name, f"one of {', '.join(PRIORS)}")
    if prior_name == "gaussian" and "prior_mean" in tensors:
        mean = tensor_array(tensors["prior_mean"]).astype(np.float64)
        factor = tensor_array(tensors.get("prior_cov_factor", torch.zeros(0))).astype(np.float64)
        if mean.shape != (dim,) or factor.shape != (dim, dim) or not (np.isfinite(mean).all() and np.isfinite(factor).all()):
            raise FileFormatError(
                f"{path}: the gaussian prior's tensors prior_mean {mean.shape} and prior_cov_factor "
                f"{factor.shape} must be finite, of shapes ({dim},) and ({dim}, {dim}) for its {dim}-d ids. "
                "The file is damaged or was edited; sample the bank again with `synthface ids sample`."
            )
        shrinkage = _meta_number(path, meta, "prior_shrinkage", float)
        prior = Prior("gaussian", dim, mean=mean, cov_factor=factor, shrinkage=shrinkage)
    else:
        prior = isotropic_prior(dim)
    known = {"format", "version", "prior", "dim", "count", "max_cos", "seed", "exclude_max_cos",
             "num_excluded", "prior_shrinkage"}
    nearest = None
    if "nearest_cos" in tensors:
        nearest = tensor_array(tensors["nearest_cos"])
        valid = nearest.shape == (vectors.shape[0],) and np.issubdtype(nearest.dtype, np.floating)
        if not valid or not (np.isfinite(nearest).all() or vectors.shape[0] == 1):
            raise FileFormatError(
                f"{path}: the tensor nearest_cos has shape {nearest.shape} and dtype {nearest.dtype}; it must be "
                f"{vectors.shape[0]} finite cosines, one per identity. The file is damaged or was edited; sample "
                "the bank again with `synthface ids sample`, or check it with `synthface ids verify`."
            )
        nearest = nearest.astype(np.float32)
    return IdentityBank(
        vectors=vectors,
        prior=prior,
        max_cos=_meta_number(path, meta, "max_cos", float),
        seed=_meta_number(path, meta, "seed", int),
        exclude_max_cos=_meta_number(path, meta, "exclude_max_cos", float),
        num_excluded=_meta_number(path, meta, "num_excluded", int) or 0,
        metadata={k: v for k, v in meta.items() if k not in known},
        nearest_cos=nearest,
    )


def _meta_number(path: Path, meta: dict[str, str], key: str, kind: type) -> float | int | None:
    """The number stored under `key` in a bank's metadata (None when absent or empty); a value that
    is not a finite number of that kind (or a negative count) is a FileFormatError naming file and key."""
    text = meta.get(key)
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or (kind is int and value < 0):
        raise _bad_metadata(path, key, text, "a finite number" if kind is float else "a non-negative integer")
    return value


def _bad_metadata(path: Path, key: str, text: str, expected: str) -> FileFormatError:
    return FileFormatError(
        f"{path}: metadata {key!r} is {text!r}, expected {expected}. The file is damaged or was edited by "
        "hand; sample the bank again with `synthface ids sample`, or save the vectors as an (N, D) .npy "
        "file to import them without metadata."
    )


def tensor_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array of the same kind of numbers (bfloat16, which numpy lacks, as float32);
    complex or boolean tensors stay so, for `check_vectors` to refuse."""
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def load_vectors(path: str | Path, dim: int | None = None) -> np.ndarray:
    """Read an (N, D) float array from `.npy` or `.safetensors` (tensor `ids`, `embeddings`, or the only one)."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileFormatError(f"{path} {_not_a_file(path)}. Pass the path of an (N, D) .npy array.")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FileFormatError(
                f"{path} is not a readable .npy array ({exc}). It may be empty, truncated or "
                "pickled; save vectors with numpy.save(path, array) as a plain float array."
            ) from None
    else:
        tensors, _ = read_safetensors(path)
        for name in ("ids", "embeddings"):
            if name in tensors:
                array = tensor_array(tensors[name])
                break
        else:
            if len(tensors) != 1:
                raise FileFormatError(
                    f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}) and none "
                    "is named 'ids' or 'embeddings'; name the (N, D) vectors tensor 'embeddings'."
                )
            array = tensor_array(next(iter(tensors.values())))
    return check_vectors(str(path), array, dim=dim)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileFormatError(f"{path} {_not_a_file(path)}. Check the path, or create the file with `synthface ids sample`.")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{path} is empty (0 bytes), probably left by an interrupted write; create it again.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FileFormatError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or in another "
            "format; recreate it, or pass an (N, D) .npy array instead."
        ) from None
    return tensors, meta


def _not_a_file(path: Path) -> str:
    """Why an input `path` that is not a regular file cannot be read, as a predicate."""
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "does not exist"
