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

# What each file-system error means for an output, and what the user can do about it. Every command
# turns these errnos into one OutputPathError paragraph through `output_error` / `output_errors`.
_OUTPUT_ERRNO_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose a folder on another disk",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.EACCES: "this user may not write there; choose a writable folder",
    errno.EPERM: "this user may not write there; choose a writable folder",
    errno.ENAMETOOLONG: "a name in the path is too long for the file system; choose a shorter name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose a path whose parents are folders",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOENT: "a folder on the way does not exist (or was removed meanwhile); create it or choose another path",
    errno.ELOOP: "the path has a loop of symbolic links; choose another path",
    errno.EEXIST: "something already exists under that name; remove it or choose another path",
    errno.EFBIG: "the file is larger than the file system allows; choose a folder on another disk",
}
OUTPUT_ERRNOS = frozenset(_OUTPUT_ERRNO_FIXES)


def output_error(exc: OSError, path: str | Path, *, action: str = "write") -> OutputPathError:
    """The one-paragraph OutputPathError for a file-system error `exc` met while trying to `action` `path`."""
    fix = _OUTPUT_ERRNO_FIXES.get(exc.errno, "check the path and the disk, or choose another output folder")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputPathError(
        f"Cannot {action} {path}: {reason} ({fix}). Nothing under the final name was changed; fix that and run "
        "the command again."
    )


@contextlib.contextmanager
def output_errors(path: str | Path, *, action: str = "write") -> Iterator[None]:
    """Turn a file-system error (full disk, read-only, name too long, a file on the way, ...) raised inside
    the block into `output_error`'s paragraph; other errors pass through unchanged."""
    try:
        yield
    except OutputPathError:
        raise
    except OSError as exc:
        if exc.errno in OUTPUT_ERRNOS:
            raise output_error(exc, path, action=action) from None
        raise


def check_output_folder(folder: str | Path, *, what: str = "output folder", option: str = "--out") -> Path:
    """Return `folder` if a folder can be created or written there, else raise a clear OutputPathError.

    Nothing is created: a refusal leaves the file system as it was. Refused: an existing entry that is
    not a folder (a file, a device, a FIFO), a path under a file, a name too long for the file system,
    and a folder (or the nearest existing parent) that this user cannot write.
    """
    folder = Path(folder)
    with output_errors(folder, action=f"use the {what}"):
        try:
            mode = folder.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            mode = folder.stat().st_mode  # a link to a folder is a folder
        if mode is not None and not stat.S_ISDIR(mode):
            raise OutputPathError(
                f"Cannot use {folder} as the {what}: it is {_kind(folder)}, not a folder. Give a folder path "
                f"with {option}."
            )
        probe = folder
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
            if probe.exists() and not probe.is_dir():
                raise OutputPathError(
                    f"Cannot create the {what} {folder}: {probe} is {_kind(probe)}, not a folder. Give a path "
                    f"whose parents are folders with {option}."
                )
        _check_name_lengths(folder)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputPathError(
                f"Cannot write the {what} {folder}: {probe} is read-only for this user. Choose a writable "
                f"location with {option}."
            )
    return folder


def _check_name_lengths(path: Path) -> None:
    """Raise ENAMETOOLONG as an OSError if any component of `path` is longer than its file system allows."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        limit = os.pathconf(existing if existing.exists() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))


def check_output_path(path: str | Path) -> Path:
    """Return `path` if a file can be written there, else raise a clear OutputPathError.

    Refused: a folder that is missing, not a folder or read-only, and a `path` that exists but is
    not a regular file (folder, symbolic link, device such as /dev/null, FIFO, socket). Outputs are
    written under a temporary name and renamed over `path`, which would replace such an entry
    itself (for root, /dev/null for the whole machine) instead of writing through it.
    """
    path = Path(path)
    with output_errors(path):
        _check_name_lengths(path)
        return _check_output_path(path)


def _check_output_path(path: Path) -> Path:
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
    with output_errors(path):
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
        if exc.errno in OUTPUT_ERRNOS and not isinstance(exc, OutputPathError):
            raise output_error(exc, path) from None
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
