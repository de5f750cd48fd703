"""Safe file output: checked destinations and atomic writes (temporary name, then rename).

A file under its final name is always complete: a killed process leaves at most a hidden
temporary file, never a half-written result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from synthface.errors import OutputPathError


def check_output_path(path: str | Path) -> Path:
    """Return `path` if a file can be written there, else raise a clear OutputPathError.

    Refused: a folder that is missing, not a folder or read-only, and a `path` that exists but is
    not a regular file (folder, symbolic link, device such as /dev/null, FIFO, socket). Outputs are
    written under a temporary name and renamed over `path`, which would replace such an entry
    itself (for root, /dev/null for the whole machine) instead of writing through it.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            raise OutputPathError(
                f"Cannot write {path}: {folder} is {_kind(folder)}, not a folder. Give a path inside an "
                "existing folder."
            )
        raise OutputPathError(
            f"Cannot write {path}: the folder {folder} does not exist. Create it first "
            f"(mkdir -p {folder}) or choose another output path."
        )
    if not os.access(folder, os.W_OK):
        raise OutputPathError(
            f"Cannot write {path}: the folder {folder} is read-only for this user. Choose a "
            "writable output folder."
        )
    _refuse_non_regular(path)
    return path


def _refuse_non_regular(path: Path) -> None:
    """Raise OutputPathError if `path` exists and is anything but a regular file (links not followed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"Cannot write {path}: it is a folder. Give a file name.")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        fix = ""  # never advise removing a device node
    else:
        fix = f", or remove the {'link' if stat.S_ISLNK(mode) else 'entry'} first"
    raise OutputPathError(
        f"Cannot write {path}: it is {_kind(path)}, not a regular file, and synthface replaces an output "
        f"by renaming a finished file over it, which would replace the {_kind(path, article=False)} "
        f"itself. Give the path of a regular file (or a new name){fix}."
    )


def _kind(path: Path, *, article: bool = True) -> str:
    """What `path` is, in words ("a symbolic link to X", "a FIFO", ...), links not followed."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        kind = f"symbolic link to {os.readlink(path)}" if article else "link"
    else:
        kinds = ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISCHR, "device"),
                 (stat.S_ISBLK, "device"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"))
        kind = next((name for test, name in kinds if test(mode)), "special file")
    return f"a {kind}" if article else kind


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on error remove it.

    `path` is checked by `check_output_path` first and again just before the rename, so an existing
    link, device, FIFO, socket or folder under that name is never replaced.
    """
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        _refuse_non_regular(path)  # checked again: a link or device may have appeared during the work
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
