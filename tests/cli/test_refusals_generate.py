"""`generate`, `ids sample` and `embed` against file-system trouble (issue #22, classes 4 and 10): an
output folder that already holds files, a name too long, a path under a file, a read-only disk and a
full disk at start or mid-run are one paragraph and an exit code; nothing is left half-written, and
the command then works once the cause is fixed."""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib

import numpy as np
import pytest

from synthface.identity import IdentityBank, isotropic_prior
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bank(tmp_path) -> pathlib.Path:
    x = np.random.default_rng(0).standard_normal((2, 512))
    path = tmp_path / "bank.safetensors"
    IdentityBank((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), isotropic_prior(512)).save(path)
    return path


def generate(capsys, bank, out, *extra):
    return run_cli_inprocess(capsys, "generate", "--ids", bank, "-k", "2", "--model", "tiny", "--steps", "1",
                             "--device", "cpu", "--batch-size", "1", "--out", out, *extra)


def tree(root: pathlib.Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def full_disk_after(monkeypatch, writes: int, method: str = "write_bytes") -> None:
    """Path.<method> fails with ENOSPC after `writes` successful calls, as a disk filling up mid-run."""
    real, calls = getattr(pathlib.Path, method), []

    def write(self, *args, **kwargs):
        calls.append(self)
        if len(calls) > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, write)


# ---------------------------------------------------------------- generate: class 10


def test_generate_refuses_a_folder_that_holds_files_unless_overwrite(tmp_path, capsys, bank):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = generate(capsys, bank, out)
    assert_clean_refusal(result, 2, "already holds 1 entry (notes.txt)", "--overwrite", "other files are kept")
    assert tree(out) == {"notes.txt": b"mine"}

    assert generate(capsys, bank, out, "--overwrite").returncode == 0
    first = json.loads((out / "manifest.json").read_text())
    assert [r["file"] for r in first["images"]] == ["00000/000.png", "00000/001.png", "00001/000.png", "00001/001.png"]
    assert (out / "notes.txt").read_text() == "mine"

    # Again with one image per identity: the earlier run's second images go, the user's file stays.
    result = run_cli_inprocess(capsys, "generate", "--ids", bank, "-k", "1", "--model", "tiny", "--steps", "1",
                               "--device", "cpu", "--out", out, "--overwrite")
    assert result.returncode == 0, result.output
    assert sorted(tree(out)) == ["00000", "00000/000.png", "00001", "00001/000.png", "manifest.json", "notes.txt"]
    assert (out / "00000" / "000.png").read_bytes() == tree(out)["00000/000.png"]


def test_generate_into_an_empty_folder_needs_no_overwrite_and_writes_the_same_bytes(tmp_path, capsys, bank):
    (tmp_path / "empty").mkdir()
    assert generate(capsys, bank, tmp_path / "empty").returncode == 0
    assert generate(capsys, bank, tmp_path / "new" / "deeper").returncode == 0
    assert tree(tmp_path / "empty") == tree(tmp_path / "new" / "deeper")
    assert not [p for p in tmp_path.rglob(".synthface-generate-*")]


def test_generate_shows_the_rate_and_the_time_left():
    from rich.console import Console

    from synthface.cli import generate as command

    screen = io.StringIO()
    with command._progress(Console(file=screen, force_terminal=True, width=160)) as progress:
        task = progress.add_task("rendering", total=10)
        for _ in range(4):
            progress.update(task, advance=1)
        progress.refresh()
    text = screen.getvalue()
    assert "4/10" in text and "img/s" in text and "-:--:--" not in text.split("4/10")[-1], text


# ---------------------------------------------------------------- generate: class 4


def test_generate_on_a_full_disk_mid_run_leaves_nothing_and_then_works(tmp_path, capsys, bank, monkeypatch):
    full_disk_after(monkeypatch, 2)
    result = generate(capsys, bank, tmp_path / "new")
    assert_clean_refusal(result, 2, "no space left on device", "the disk is full", str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    result = generate(capsys, bank, tmp_path / "mine")
    assert_clean_refusal(result, 2, "no space left on device")
    assert tree(tmp_path / "mine") == {}  # the folder that was there stays, empty
    monkeypatch.undo()
    assert generate(capsys, bank, tmp_path / "mine").returncode == 0  # the refusal left the way open
    assert len(json.loads((tmp_path / "mine" / "manifest.json").read_text())["images"]) == 4


def test_generate_on_a_full_disk_keeps_an_earlier_result_under_overwrite(tmp_path, capsys, bank, monkeypatch):
    out = tmp_path / "out"
    assert generate(capsys, bank, out).returncode == 0
    before = tree(out)
    full_disk_after(monkeypatch, 1)
    assert_clean_refusal(generate(capsys, bank, out, "--overwrite", "--seed", "5"), 2, "no space left on device")
    assert tree(out) == before


@pytest.mark.parametrize("case", ["too-long", "under-a-file", "read-only", "read-only-mkdir"])
def test_generate_refuses_an_unusable_output_folder_at_start(tmp_path, capsys, bank, monkeypatch, case):
    (tmp_path / "a_file").write_text("x")
    out, needles = {
        "too-long": (tmp_path / ("n" * 300), ["file name too long", "shorter name"]),
        "under-a-file": (tmp_path / "a_file" / "out", ["not a directory", "a part of the path is a file"]),
        "read-only": (tmp_path / "ro" / "out", ["read-only", "--out"]),
        "read-only-mkdir": (tmp_path / "ro" / "out", ["read-only file system", "writable disk"]),
    }[case]
    if case == "read-only":  # access(2) says EROFS on a read-only mount
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK)
    if case == "read-only-mkdir":  # or the mount turns read-only after the check
        def mkdir(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    before = tree(tmp_path)
    assert_clean_refusal(generate(capsys, bank, out), 2, *needles)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- ids sample and embed: class 4


def sample(capsys, out):
    return run_cli_inprocess(capsys, "ids", "sample", "--num", "20", "--max-cos", "0.9", "--dim", "8",
                             "--device", "cpu", "--out", out)


@pytest.mark.parametrize("case", ["too-long", "under-a-file", "read-only", "full-disk"])
def test_ids_sample_file_system_errors_are_one_message_and_write_nothing(tmp_path, capsys, monkeypatch, case):
    (tmp_path / "a_file").write_text("x")
    out, needles = {
        "too-long": (tmp_path / ("n" * 300 + ".safetensors"), ["file name too long", "shorter name"]),
        "under-a-file": (tmp_path / "a_file" / "ids.safetensors", ["a_file is a file, not a folder"]),
        "read-only": (tmp_path / "ids.safetensors", ["read-only"]),
        "full-disk": (tmp_path / "ids.safetensors", ["no space left on device", "the disk is full"]),
    }[case]
    if case == "read-only":
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK)
    if case == "full-disk":  # the bank's data fails to reach the disk
        real = os.fsync

        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", fsync)
    before = tree(tmp_path)
    assert_clean_refusal(sample(capsys, out), 2, *needles)
    assert tree(tmp_path) == before
    if case == "full-disk":
        monkeypatch.setattr(os, "fsync", real)
        assert sample(capsys, out).returncode == 0 and out.is_file()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> pathlib.Path:
    from PIL import Image

    from tests.helpers.faces import astronaut

    path = tmp_path_factory.mktemp("photo") / "a.png"
    Image.fromarray(astronaut()).save(path)
    return path


@pytest.mark.parametrize("case", ["too-long", "under-a-file", "read-only", "full-disk"])
def test_embed_file_system_errors_are_one_message_and_write_nothing(tmp_path, capsys, monkeypatch, photo, case):
    (tmp_path / "a_file").write_text("x")
    out, needles = {
        "too-long": (tmp_path / ("n" * 300 + ".safetensors"), ["file name too long", "shorter name"]),
        "under-a-file": (tmp_path / "a_file" / "e.safetensors", ["a_file is a file, not a folder"]),
        "read-only": (tmp_path / "e.safetensors", ["read-only"]),
        "full-disk": (tmp_path / "e.safetensors", ["no space left on device", "the disk is full"]),
    }[case]
    if case == "read-only":
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK)
    if case == "full-disk":
        import safetensors.numpy

        def save_file(tensors, filename, metadata=None):
            pathlib.Path(filename).write_bytes(b"\0" * 16)  # a part of the file got out before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    before = tree(tmp_path)
    assert_clean_refusal(run_cli_inprocess(capsys, "embed", photo, "--out", out), 2, *needles)
    assert tree(tmp_path) == before
