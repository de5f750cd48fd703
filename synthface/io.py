"""Safe file output: checked destinations and atomic writes (temporary name, then rename).

A file under its final name is always complete: a killed process leaves at most a hidden
temporary file, never a half-written result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from synthface.errors import OutputPathError


def check_output_path(path: str | Path) -> Path:
    """Return `path` if its folder exists and is writable, else raise a clear OutputPathError."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(
            f"Cannot write {path}: the folder {folder} does not exist. Create it first "
            f"(mkdir -p {folder}) or choose another output path."
        )
    if not os.access(folder, os.W_OK):
        raise OutputPathError(
            f"Cannot write {path}: the folder {folder} is read-only for this user. Choose a "
            "writable output folder."
        )
    if path.is_dir():
        raise OutputPathError(f"Cannot write {path}: it is a folder. Give a file name.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on error remove it."""
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise OutputPathError(
                f"Writing {path} failed: {os.strerror(exc.errno)}. Nothing under that name was "
                "changed; free space or choose another folder, then run the command again."
            ) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors serialisation with a canonical header, so equal content gives equal bytes.

    The library writes its metadata map in hash order, which differs between processes; a
    resumed or multi-rank run must reproduce files byte for byte, so the JSON header is rewritten
    with sorted keys (tensor offsets are relative to the data block and do not move).
    """
    import json

    from safetensors.numpy import save

    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + size :]


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


FSYNC_EACH_MAX = 64  # beyond this many files one os.sync() beats a flush per file (ImageFolder: ~1M files)


def fsync_tree(folder: Path) -> None:
    """Flush the staged files to disk before the rename makes them visible."""
    paths = [os.path.join(root, name) for root, _dirs, files in os.walk(folder) for name in files]
    if len(paths) > FSYNC_EACH_MAX and hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
