"""What every format shares: the Sample record, the summary, what a format declares (ExportFormat),
the random-access reader contract (ExportReader), input checks, atomic output folders and a disk
spool for writers that must reorder samples without holding them in memory.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    import numpy as np

from synthface.errors import InvalidInputError, OutputPathError
from synthface.io import fsync_dir, fsync_tree

JPEG_SOI = b"\xff\xd8"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class Sample:
    """One training image: its class `label` (0..C-1), a unique `key` (letters, digits, `_`, `-`;
    no dots, WebDataset's rule), the encoded JPEG and JSON-able metadata."""

    label: int
    key: str
    jpeg: bytes
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExportSummary:
    """What a writer produced: `files` are relative to `out_dir`."""

    format: str
    out_dir: Path
    num_samples: int
    num_classes: int
    files: tuple[str, ...]


class Writer(Protocol):
    def __call__(self, samples: Iterable[Sample], out_dir: str | Path, *, num_classes: int | None = None,
                 overwrite: bool = False, **options) -> ExportSummary: ...


class ExportReader(abc.ABC):
    """An export opened for random access: encoded image + label by index, every label known up front.

    `open(folder)` of each format checks what it can before anything is sized from the files (headers,
    sizes, labels) and raises FileFormatError naming the damage. File handles are opened lazily, once
    per process (`_handle`), and never pickled, so DataLoader workers never share one.
    """

    fmt: str
    labels: np.ndarray  # int64, one per sample, known without decoding images
    num_classes: int

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abc.abstractmethod
    def read(self, i: int) -> tuple[bytes, int]:
        """Sample `i`: its encoded image and its label."""

    @abc.abstractmethod
    def where(self, i: int) -> str:
        """Where sample `i` lives, for a message ("Record 7 (byte 1234) of .../train.rec")."""

    def __getstate__(self) -> dict:  # handles never travel to workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, path: Path):
        pid = os.getpid()
        if getattr(self, "_pid", None) != pid:
            self._handles, self._pid = {}, pid
        if path not in self._handles:
            self._handles[path] = open(path, "rb")  # noqa: SIM115 - lives as long as the process's reader
        return self._handles[path]


@dataclass(frozen=True)
class ExportFormat:
    """What one export format declares; `synthface.export.FORMATS` holds one per format.

    `files`: the names it writes (patterns), `signature`: the files that identify it, in words (for
    messages), `detect(folder)`: whether a folder holds this format, `open(folder)`: an ExportReader.
    `detect_last`: its detect matches on the folder's shape alone (not on file names of its own), so
    the formats with named files are asked first.
    """

    name: str
    files: tuple[str, ...]
    signature: str
    write: Writer
    detect: Callable[[Path], bool]
    open: Callable[[Path], ExportReader]
    detect_last: bool = False


class SampleChecker:
    """Validates samples as they stream past and counts what a writer needs at the end."""

    def __init__(self, num_classes: int | None):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0):
            raise InvalidInputError(f"num_classes must be a non-negative integer, got {num_classes!r}.")
        self.num_classes = num_classes
        self.count = 0
        self.max_label = -1
        self._keys: set[str] = set()

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for sample in samples:
            self.check(sample)
            yield sample

    def check(self, s: Sample) -> None:
        where = f"Sample {self.count} (key {getattr(s, 'key', '?')!r})"
        if not isinstance(s, Sample):
            raise InvalidInputError(f"Sample {self.count} is a {type(s).__name__}; writers take synthface.export.Sample objects.")
        if isinstance(s.label, bool) or not isinstance(s.label, int) or s.label < 0:
            raise InvalidInputError(f"{where} has label {s.label!r}; labels are integers 0..num_classes-1.")
        if self.num_classes is not None and s.label >= self.num_classes:
            raise InvalidInputError(
                f"{where} has label {s.label} but num_classes is {self.num_classes}; labels must be below it. "
                "Pass the right num_classes or leave it out to use the largest label + 1."
            )
        if not isinstance(s.key, str) or not _KEY_RE.match(s.key):
            raise InvalidInputError(
                f"{where}: keys may hold only letters, digits, '_' and '-' (no dots or slashes: WebDataset splits "
                "member names at the first dot). Rename the key, e.g. '0000012_0003'."
            )
        if s.key in self._keys:
            raise InvalidInputError(f"{where}: the key is used twice; every sample needs its own key.")
        if not isinstance(s.jpeg, (bytes, bytearray, memoryview)) or bytes(s.jpeg[:2]) != JPEG_SOI:
            raise InvalidInputError(f"{where}: `jpeg` must be JPEG-encoded bytes (starting FF D8).")
        if not isinstance(s.meta, dict):
            raise InvalidInputError(f"{where}: `meta` must be a dict, got {type(s.meta).__name__}.")
        self._keys.add(s.key)
        self.count += 1
        self.max_label = max(self.max_label, s.label)

    @property
    def classes(self) -> int:
        return self.num_classes if self.num_classes is not None else self.max_label + 1


def jsonable(value):
    """Metadata as plain JSON: numpy scalars/arrays to Python, NaN/inf to None (strict parsers reject NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dump_meta(meta: dict) -> bytes:
    return json.dumps(jsonable(meta), sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- atomic output folders


def _as_output_error(exc: OSError, path: Path) -> OutputPathError:
    return OutputPathError(
        f"Writing {path} failed: {os.strerror(exc.errno) if exc.errno else exc}. Nothing under the final name was "
        "changed; free some space or choose a writable folder, then run the command again."
    )


def staging_prefix(out_dir: Path) -> str:
    """Staging folders are named `<prefix><pid>-...`, so a leftover's owner can be told."""
    return f".{out_dir.name}.partial-"


def _owner_alive(stale: Path, prefix: str) -> bool:
    """Whether the process that made staging folder `stale` still runs on this machine (unparseable: yes)."""
    pid = stale.name[len(prefix):].split("-", 1)[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


@contextlib.contextmanager
def staged_dir(out_dir: str | Path, *, overwrite: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield an empty folder beside `out_dir`; on success rename it to `out_dir`, on failure delete it.

    A killed export leaves only a hidden `.<name>.partial-<pid>-*` folder, never a half-written file
    under the final name; the next export to the same folder removes such leftovers once their process
    has ended (a live writer's folder is never touched). One writer per `out_dir` at a time (the run
    folder's lock sees to that for `synthface run` and `synthface export`). With `overwrite`, an existing `out_dir` is swapped out only once the new one
    is complete.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create the folder {parent}: {os.strerror(exc.errno) if exc.errno else exc}. "
            "Choose an output folder you can write to."
        ) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"Cannot export to {out_dir}: it is a file. Give a folder path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputPathError(
            f"The folder {out_dir} already holds files. Remove it, choose another folder, or pass "
            "overwrite=True to replace it once the new export is complete."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"Cannot write into {parent}: it is read-only for this user. Choose a writable folder.")
    prefix = staging_prefix(out_dir)
    for stale in parent.glob(prefix + "*"):
        if not _owner_alive(stale, prefix):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()  # not mkdtemp: the finished folder should get the user's umask, not 0700
    except OSError as exc:
        raise _as_output_error(exc, out_dir) from None
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-old-", dir=parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        if fsync:
            fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _DISK_ERRNOS:
            raise _as_output_error(exc, out_dir) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- disk spool


class Spool:
    """Samples parked in one temporary file so a writer can emit them in another order (shuffled,
    grouped by class) with memory for the index only (~30 bytes per sample)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w+b")  # noqa: SIM115 - lives as long as the spool; closed by close()
        self._offsets = array("q")
        self._sizes = array("l")  # key, jpeg and meta lengths, three per sample
        self.labels = array("q")

    def add(self, s: Sample) -> None:
        key, meta = s.key.encode(), dump_meta(s.meta)
        self._offsets.append(self._file.tell())
        self._sizes.extend((len(key), len(s.jpeg), len(meta)))
        self.labels.append(s.label)
        self._file.write(key)
        self._file.write(s.jpeg)
        self._file.write(meta)

    def __len__(self) -> int:
        return len(self._offsets)

    def get(self, i: int) -> Sample:
        nk, nj, nm = self._sizes[3 * i : 3 * i + 3]
        self._file.seek(self._offsets[i])
        blob = self._file.read(nk + nj + nm)
        return Sample(int(self.labels[i]), blob[:nk].decode(), blob[nk : nk + nj], json.loads(blob[nk + nj :]))

    def in_order(self, order: Iterable[int]) -> Iterator[Sample]:
        self._file.flush()
        for i in order:
            yield self.get(int(i))

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
