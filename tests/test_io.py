"""synthface.io: every file-system error on an output becomes one paragraph, and a refusal creates nothing."""

import errno
import os

import pytest

from synthface.errors import OutputPathError
from synthface.io import atomic_write_bytes, check_output_folder, check_output_path, output_errors


def test_output_folder_refusals_name_the_problem_and_create_nothing(tmp_path):
    afile = tmp_path / "file"
    afile.write_bytes(b"x")
    cases = {
        afile: "it is a file, not a folder",
        afile / "sub": "a part of the path is a file",
        tmp_path / ("x" * 300): "too long for the file system",
    }
    for folder, expected in cases.items():
        with pytest.raises(OutputPathError, match=expected):
            check_output_folder(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_device_node_is_not_an_output_folder():
    with pytest.raises(OutputPathError, match="it is a device"):
        check_output_folder("/dev/null")


def test_output_path_under_a_file_and_too_long(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.bin")
    with pytest.raises(OutputPathError, match="too long"):
        atomic_write_bytes(tmp_path / ("y" * 300), b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.parametrize("code,expected", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                           (errno.ENAMETOOLONG, "too long"), (errno.ENOTDIR, "is a file")])
def test_output_errors_translates_each_errno(tmp_path, code, expected):
    with pytest.raises(OutputPathError, match=expected) as info:
        with output_errors(tmp_path / "x"):
            raise OSError(code, os.strerror(code))
    assert str(tmp_path / "x") in str(info.value)


def test_full_disk_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputPathError, match="disk is full"):
        atomic_write_bytes(target, b"new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(OSError) as info:
        with output_errors(tmp_path):
            raise OSError(errno.EIO, "I/O error")
    assert not isinstance(info.value, OutputPathError)
