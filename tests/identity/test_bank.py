"""The bank file format: save/load round trips, imports, damaged files, output path errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthface.errors import FileFormatError, InvalidInputError, OutputPathError
from synthface.identity import load_bank, load_vectors, sample_identities
from synthface.io import safetensors_bytes
from tests.helpers.vectors import anisotropic_reference, steep_gaussian


def test_save_load_round_trip(tmp_path):
    ref = anisotropic_reference(dim=32)
    bank = sample_identities(100, max_cos=0.6, prior="gaussian", reference=ref, seed=9)
    path = bank.save(tmp_path / "ids.safetensors")
    loaded = load_bank(path)
    assert np.array_equal(loaded.vectors, bank.vectors)
    assert (loaded.prior.name, loaded.max_cos, loaded.seed) == ("gaussian", 0.6, 9)
    np.testing.assert_allclose(loaded.prior.mean, bank.prior.mean, rtol=1e-6)
    # The saved prior draws the same candidates as the fitted one.
    draws_a = bank.prior.draw(np.random.default_rng(0), 5)
    draws_b = loaded.prior.draw(np.random.default_rng(0), 5)
    np.testing.assert_allclose(draws_a, draws_b, atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        meta = handle.metadata()
        assert handle.get_tensor("ids").dtype == np.float32
    assert meta["prior"] == "gaussian" and meta["seed"] == "9" and meta["version"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_npy_import(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((20, 512)) * 5
    np.save(tmp_path / "v.npy", vectors)
    bank = load_bank(tmp_path / "v.npy")
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-6)
    assert load_vectors(tmp_path / "v.npy").shape == (20, 512)


def test_corrupt_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        load_bank(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FileFormatError, match="not a readable safetensors"):
        load_bank(tmp_path / "junk.safetensors")
    with pytest.raises(FileFormatError, match="does not exist"):
        load_bank(tmp_path / "missing.safetensors")
    np.save(tmp_path / "wrong.npy", np.zeros(5))
    with pytest.raises(InvalidInputError, match=r"\(N, D\)"):
        load_vectors(tmp_path / "wrong.npy")


def test_output_path_errors_keep_existing_files(tmp_path, monkeypatch):
    import errno
    import os

    bank = sample_identities(5, max_cos=0.5, dim=8)
    with pytest.raises(OutputPathError, match="does not exist"):
        bank.save(tmp_path / "missing" / "ids.safetensors")
    target = tmp_path / "ids.safetensors"
    target.write_bytes(b"previous")
    # A read-only folder (simulated: this suite runs as root, which ignores permission bits).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(OutputPathError, match="read-only"):
        bank.save(target)
    monkeypatch.setattr(os, "access", real_access)
    # A disk that fills up during the write: the old file stays, no temporary file is left.
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputPathError, match="No space left"):
        bank.save(target)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ids.safetensors"]


def test_nearest_cosines_are_saved_streamed_in_the_canonical_layout(tmp_path):
    bank = sample_identities(300, max_cos=0.6, prior="gaussian", reference=steep_gaussian().draw(
        np.random.default_rng(1), 200), seed=2)
    path = bank.save(tmp_path / "ids.safetensors")
    loaded = load_bank(path)
    assert np.array_equal(loaded.nearest_cos, bank.nearest_cos)
    assert loaded.separation().max_cos == bank.separation().max_cos
    # Written from the arrays, yet byte for byte what the safetensors library gives, canonicalised.
    tensors = {"ids": bank.vectors, "nearest_cos": bank.nearest_cos, **bank.prior.tensors()}
    meta = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    assert path.read_bytes() == safetensors_bytes(tensors, meta)
    assert load_bank(bank.save(tmp_path / "plain.safetensors")).separation() is not None
