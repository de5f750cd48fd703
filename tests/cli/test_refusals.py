"""Bad inputs to `ids`, `embed`, `generate`, `report` (and usage mistakes everywhere) are refused
with one paragraph and an exit code, no traceback, and nothing outside the expected outputs changed.

One table, run in-process through the real entry point; each case names the defect of issue #16 it
covers. A few behaviours that are not refusals (a warning, Ctrl-C) have their own tests below.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.identity import IdentityBank, isotropic_prior
from synthface.io import safetensors_bytes
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

DIM = 8


def _bank_bytes(meta: dict[str, str] | None = None, **tensors: np.ndarray) -> bytes:
    base = {"format": "synthface.identity_bank", "prior": "isotropic", "max_cos": "0.9", "seed": "0"}
    return safetensors_bytes(tensors, {**base, **(meta or {})})


def _unit(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _prepare(tmp: Path) -> None:
    """Inputs every case may use: a bank, damaged banks, vectors, a FIFO, links and a folder."""
    IdentityBank(_unit(4, 0), isotropic_prior(DIM), max_cos=0.99, seed=0).save(tmp / "bank.safetensors")
    good = (tmp / "bank.safetensors").read_bytes()
    (tmp / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (tmp / "badmeta.safetensors").write_bytes(_bank_bytes({"max_cos": "abc"}, ids=_unit(4, 0)))
    (tmp / "negseed.safetensors").write_bytes(_bank_bytes({"seed": "-3"}, ids=_unit(4, 0)))
    (tmp / "badprior.safetensors").write_bytes(_bank_bytes({"prior": "cauchy"}, ids=_unit(4, 0)))
    (tmp / "gaussnofactor.safetensors").write_bytes(
        _bank_bytes({"prior": "gaussian"}, ids=_unit(4, 0), prior_mean=np.zeros(DIM, np.float32))
    )
    (tmp / "names.safetensors").write_bytes(_bank_bytes(None, vectors=_unit(4, 0)))
    (tmp / "boolids.safetensors").write_bytes(_bank_bytes(None, ids=np.ones((4, DIM), dtype=bool)))
    from safetensors.torch import save_file

    save_file({"ids": torch.randn(4, DIM, dtype=torch.complex64)}, str(tmp / "complexids.safetensors"))
    np.save(tmp / "complex.npy", _unit(6, 1) + 1j * _unit(6, 2))
    np.save(tmp / "zero.npy", np.vstack([_unit(3, 3), np.zeros((1, DIM), np.float32)]))
    np.save(tmp / "exclude.npy", _unit(200, 4))
    (tmp / "folder.safetensors").mkdir()
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "target.txt").write_text("the user's own file\n")
    (tmp / "link.safetensors").symlink_to(tmp / "target.txt")
    os.mkfifo(tmp / "fifo.safetensors")
    (tmp / "run").mkdir()
    (tmp / "gen").mkdir()
    (tmp / "gen" / "manifest.json").symlink_to(tmp / "target.txt")
    (tmp / "rep").mkdir()
    (tmp / "rep" / "report.json").symlink_to(tmp / "target.txt")
    (tmp / "rep" / "report.html").write_text("old report\n")


def _snapshot(tmp: Path) -> dict[str, tuple]:
    """Every entry under `tmp` with its kind and content (links: target; files: sha256), links not followed."""
    out = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                out[str(path.relative_to(tmp))] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                out[str(path.relative_to(tmp))] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[str(path.relative_to(tmp))] = (stat.S_IFMT(mode),)
    return out


BANK = "{t}/bank.safetensors"
GEN = ("generate", "--ids", BANK, "-k", "1", "--out", "{t}/gen", "--model", "tiny")
REPORT = ("report", "{t}/run", "--no-html")
NO_CUDA = torch.cuda.is_available()

# (defect, args, exit code, needles the message must contain)
CASES = [
    # 1: usage mistakes give click's usage message and exit 2, in every command group
    ("1-bare", (), 2, ["usage: synthface"]),
    ("1-unknown-command", ("frobnicate",), 2, ["no such command", "frobnicate"]),
    ("1-missing-option", ("ids", "sample", "--num", "10", "--out", "{t}/x.safetensors"), 2, ["missing option", "--max-cos"]),
    ("1-unknown-option", ("ids", "sample", "--bogus"), 2, ["no such option", "--bogus"]),
    ("1-ids-bad-type", ("ids", "sample", "--num", "10", "--max-cos", "abc", "--out", "{t}/x.safetensors"), 2,
     ["invalid value", "--max-cos"]),
    ("1-ids-verify-bad-type", ("ids", "verify", BANK, "--bins", "many"), 2, ["invalid value", "--bins"]),
    ("1-bad-choice", ("ids", "sample", "--num", "1", "--max-cos", "0.3", "--out", "{t}/x", "--prior", "cauchy"), 2,
     ["invalid value", "--prior", "cauchy"]),
    ("1-embed-bad-choice", ("embed", "{t}/a.png", "--out", "{t}/x", "--backend", "3"), 2,
     ["unknown face backend '3'", "dlib, insightface"]),
    ("1-generate-bad-type", (*GEN, "--steps", "abc"), 2, ["invalid value", "--steps"]),
    ("1-generate-out-of-range", (*GEN[:4], "0", *GEN[5:]), 2, ["invalid value", "--images-per-id"]),
    ("1-report-bad-type", (*REPORT, "--leak-cos", "abc"), 2, ["invalid value", "--leak-cos"]),
    ("1-models-missing-argument", ("models", "download"), 2, ["missing argument", "name"]),
    ("1-demo-bad-type", ("demo", "--port", "abc"), 2, ["invalid value", "--port"]),
    ("1-run-bad-type", ("run", "{t}/r.toml", "--shard-index", "abc"), 2, ["invalid value", "--shard-index"]),
    ("1-export-missing-option", ("export", "{t}/run"), 2, ["missing option", "--format"]),
    # 3: outputs that exist and are not regular files are refused before the work, never replaced
    ("3-ids-symlink", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--dim", "8", "--out", "{t}/link.safetensors"),
     2, ["link.safetensors", "symbolic link", "remove the link"]),
    ("3-ids-fifo", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--dim", "8", "--out", "{t}/fifo.safetensors"),
     2, ["fifo.safetensors", "fifo", "regular file"]),
    ("3-ids-folder", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--dim", "8", "--out", "{t}/folder.safetensors"),
     2, ["it is a folder", "file name"]),
    ("3-embed-symlink", ("embed", "{t}/missing.png", "--out", "{t}/link.safetensors"), 2, ["symbolic link", "remove the link"]),
    ("3-embed-fifo", ("embed", "{t}/missing.png", "--out", "{t}/fifo.safetensors"), 2, ["fifo", "regular file"]),
    ("3-generate-manifest-symlink", GEN, 2, ["manifest.json", "symbolic link"]),
    ("3-generate-out-fifo", (*GEN[:6], "{t}/fifo.safetensors", *GEN[7:]), 2, ["not a folder", "--out"]),
    ("3-report-symlink", ("report", "{t}/run", "--out", "{t}/rep"), 2, ["report.json", "symbolic link"]),
    # 10: device names are checked in one place (synthface.devices.resolve_device)
    ("10-ids-sample-banana", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--out", "{t}/x.safetensors",
                              "--device", "banana"), 2, ["banana", "choose one of", "cpu"]),
    ("10-ids-verify-banana", ("ids", "verify", BANK, "--device", "banana"), 2, ["banana", "cpu"]),
    ("10-generate-banana", (*GEN, "--device", "banana"), 2, ["banana", "cpu"]),
    ("10-report-banana", (*REPORT, "--device", "banana"), 2, ["banana", "cpu"]),
    pytest.param("10-ids-verify-cuda", ("ids", "verify", BANK, "--device", "cuda"), 2, ["'cuda'", "not available", "cpu"],
                 marks=pytest.mark.skipif(NO_CUDA, reason="a GPU is usable here")),
    pytest.param("10-generate-cuda", (*GEN, "--device", "cuda:0"), 2, ["'cuda:0'", "not available"],
                 marks=pytest.mark.skipif(NO_CUDA, reason="a GPU is usable here")),
    # 12: bounds (the recipe's for generate), memory needed instead of an allocation error
    ("12-generate-size-huge", (*GEN, "--size", "65536"), 2, ["--size", "2048", "65536"]),
    ("12-generate-size-not-8", (*GEN, "--size", "100"), 2, ["--size", "multiple of 8"]),
    ("12-generate-steps", (*GEN, "--steps", "5000"), 2, ["--steps", "1000"]),
    ("12-generate-negative-seed", (*GEN, "--seed", "-1"), 2, ["invalid value", "--seed"]),
    ("12-verify-negative-bins", ("ids", "verify", BANK, "--bins", "-1"), 2, ["--bins", "10000"]),
    ("12-verify-huge-bins", ("ids", "verify", BANK, "--bins", "1000000000"), 2, ["--bins", "10000"]),
    ("12-report-negative-images", (*REPORT, "--impostor-images", "-5"), 2, ["--impostor-images", "-5"]),
    ("12-report-huge-pairs", (*REPORT, "--max-genuine-pairs", "1000000000000"), 2, ["--max-genuine-pairs", "memory"]),
    ("12-report-negative-seed", (*REPORT, "--seed", "-2"), 2, ["--seed"]),
    ("12-ids-huge-num", ("ids", "sample", "--num", "1000000000000", "--max-cos", "0.9", "--out", "{t}/x.safetensors"),
     7, ["needs about", "memory", "--num"]),
    ("12-ids-huge-dim", ("ids", "sample", "--num", "10", "--max-cos", "0.9", "--dim", "100000000000",
                         "--out", "{t}/x.safetensors"), 7, ["needs about", "--dim"]),
    ("12-ids-negative-seed", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--seed", "-1", "--out", "{t}/x"), 2,
     ["--seed", "non-negative"]),
    # 15: messages that say what is actually wrong
    ("15-folder-is-not-missing", ("ids", "verify", "{t}/folder.safetensors"), 2, ["is a folder, not a file"]),
    ("15-all-zero-is-all-zero", ("ids", "verify", "{t}/zero.npy"), 2, ["1 row(s) that are all zero", "row 3"]),
    ("15-exclusion-at-fault", ("ids", "sample", "--num", "50", "--max-cos", "0.95", "--dim", "8", "--exclude",
                               "{t}/exclude.npy", "--exclude-max-cos", "0.2", "--out", "{t}/x.safetensors"), 3,
     ["exclusion is what cannot be met", "raise --exclude-max-cos: about 0."]),
    ("15-max-cos-advice-is-higher", ("ids", "sample", "--num", "3000", "--max-cos", "0.05", "--dim", "8",
                                     "--out", "{t}/x.safetensors"), 3, ["raise --max-cos: about 0."]),
    ("15-no-max-cos-below-1", ("ids", "sample", "--num", "3000", "--max-cos", "0.5", "--dim", "2",
                               "--out", "{t}/x.safetensors"), 3, ["no --max-cos below 1", "fewer identities"]),
    ("15-report-out-is-a-file", ("report", "{t}/run", "--out", "{t}/a_file"), 2, ["a_file is a file, not a folder"]),
    # 16: silent acceptances are refused
    ("16-complex-npy", ("ids", "verify", "{t}/complex.npy"), 2, ["complex", "real"]),
    ("16-complex-reference", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--prior", "gaussian",
                              "--reference", "{t}/complex.npy", "--out", "{t}/x.safetensors"), 2, ["complex"]),
    ("16-complex-safetensors", ("ids", "verify", "{t}/complexids.safetensors"), 2, ["complex"]),
    ("16-leak-cos-nan", (*REPORT, "--leak-cos", "nan"), 2, ["--leak-cos", "nan"]),
    ("16-max-cos-nan", ("ids", "sample", "--num", "4", "--max-cos", "nan", "--out", "{t}/x.safetensors"), 2, ["max_cos"]),
    ("16-exclude-max-cos-inf", ("ids", "sample", "--num", "4", "--max-cos", "0.9", "--dim", "8", "--exclude",
                                "{t}/exclude.npy", "--exclude-max-cos", "inf", "--out", "{t}/x"), 2, ["exclude_max_cos"]),
    ("16-guidance-nan", (*GEN, "--guidance", "nan"), 2, ["--guidance"]),
    ("16-guidance-inf", (*GEN, "--guidance", "inf"), 2, ["--guidance", "30"]),
    # 11: a damaged bank names the file and the fix
    ("11-truncated", ("ids", "verify", "{t}/truncated.safetensors"), 2, ["truncated.safetensors", "not a readable"]),
    ("11-garbage", ("ids", "verify", "{t}/garbage.safetensors"), 2, ["garbage.safetensors", "not a readable"]),
    ("11-corrupt-metadata", ("ids", "verify", "{t}/badmeta.safetensors"), 2,
     ["badmeta.safetensors", "'max_cos' is 'abc'", "ids sample"]),
    ("11-negative-seed-metadata", ("ids", "verify", "{t}/negseed.safetensors"), 2, ["'seed' is '-3'"]),
    ("11-unknown-prior", ("ids", "verify", "{t}/badprior.safetensors"), 2, ["'prior' is 'cauchy'"]),
    ("11-gaussian-without-factor", ("ids", "verify", "{t}/gaussnofactor.safetensors"), 2, ["prior_cov_factor", "ids sample"]),
    ("11-wrong-tensor-names", ("ids", "verify", "{t}/names.safetensors"), 2, ["no tensor named 'ids'", "vectors"]),
    ("11-wrong-dtype", ("ids", "verify", "{t}/boolids.safetensors"), 2, ["real numbers", "bool"]),
]


@pytest.mark.parametrize(("defect", "args", "code", "needles"), CASES, ids=[c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_bad_input_is_a_clean_refusal_that_changes_nothing(tmp_path, capsys, defect, args, code, needles):
    _prepare(tmp_path)
    before = _snapshot(tmp_path)
    result = run_cli_inprocess(capsys, *(a.format(t=tmp_path) for a in args))
    assert_clean_refusal(result, code, *needles)
    assert _snapshot(tmp_path) == before
    if defect == "15-exclusion-at-fault":
        assert "raise --max-cos" not in result.output
    if defect == "15-max-cos-advice-is-higher":  # the advised value is above the one given, and valid
        advised = float(" ".join(result.output.split()).split("raise --max-cos: about ")[1].split(" ")[0])
        assert 0.05 < advised < 1.0


def test_dev_null_as_output_stays_a_device(tmp_path, capsys):
    """Defect 3: as root, renaming over /dev/null would replace it for the whole machine."""
    result = run_cli_inprocess(capsys, "ids", "sample", "--num", "4", "--max-cos", "0.9", "--out", "/dev/null")
    assert_clean_refusal(result, 2, "/dev/null", "device", "regular file")
    assert "remove" not in result.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert not list(Path("/dev").glob(".null.*.tmp"))


def test_tiny_vectors_verify_as_directions(tmp_path, capsys):
    """Defect 15: rows whose float32 sum of squares underflows are directions, not "all-zero" rows."""
    x = _unit(5, 7) * np.float32(1e-30)
    np.save(tmp_path / "tiny.npy", x)
    result = run_cli_inprocess(capsys, "ids", "verify", tmp_path / "tiny.npy", "--bins", "0")
    assert result.returncode == 0, result.output
    u = _unit(5, 7).astype(np.float64)
    expected = (u @ u.T - 2 * np.eye(5)).max()
    assert f"{expected:.4f}" in result.output


def test_embed_mean_of_different_people_warns(tmp_path, capsys, monkeypatch):
    """Defect 16: --mean over photos of different people still writes the mean, with a warning that
    names the odd photo by the analyser's same-person cosine (the demo's threshold)."""
    from synthface.faces import Face

    embeddings = {0: _unit(1, 10)[0], 1: _unit(1, 10)[0], 2: _unit(1, 11)[0]}

    class Analyzer:
        name, license, license_restricted, embedding_space, embedding_dim = "custom", "test", False, "test", DIM
        same_person_cos = 0.83  # declared, not inferred from the name: the warning must use it

        def analyze(self, images, all_faces=False):
            key = int(images[0][0, 0, 0])
            box, kps = np.array([0, 0, 8, 8], np.float32), np.zeros((5, 2), np.float32)
            return [[Face(bbox=box, kps=kps, det_score=1.0, embedding=embeddings[key], backend="dlib")]]

    monkeypatch.setattr("synthface.faces.get_analyzer", lambda name, **kwargs: Analyzer())
    for key in embeddings:
        Image.fromarray(np.full((16, 16, 3), key, np.uint8)).save(tmp_path / f"p{key}.png")
    photos = [tmp_path / f"p{key}.png" for key in embeddings]
    result = run_cli_inprocess(capsys, "embed", *photos, "--mean", "--out", tmp_path / "id.safetensors")
    assert result.returncode == 0, result.output
    text = " ".join(result.output.split())
    assert "same-person cosine 0.83" in text and "p2.png (best" in text
    assert "p0.png (best" not in text and "p1.png (best" not in text
    assert (tmp_path / "id.safetensors").is_file()

    one_person = run_cli_inprocess(capsys, "embed", *photos[:2], "--mean", "--out", tmp_path / "same.safetensors")
    assert one_person.returncode == 0 and "warning" not in one_person.output


# The child says "ready" once cli() has installed its SIGINT handler (the moment the test's Ctrl-C must come
# after), so the test waits for a signal from the child instead of a fixed time that a loaded machine outlasts.
_READY_WHEN_HANDLED = """
import signal, sys
from synthface.cli import main

real_signal = signal.signal

def spy(signum, handler):
    previous = real_signal(signum, handler)
    if signum == signal.SIGINT and callable(handler) and handler is not signal.default_int_handler:
        print("ready", flush=True)
    return previous

signal.signal = spy
sys.argv[0] = "synthface"
main()
"""


def test_ctrl_c_prints_aborted_and_exits_130(tmp_path):
    """Defect 19: typer turns Ctrl-C into a silent exit 130; the command line says "aborted"."""
    args = ["ids", "sample", "--num", "5000000", "--max-cos", "0.5", "--dim", "32", "--out", str(tmp_path / "x.st")]
    proc = subprocess.Popen([sys.executable, "-c", _READY_WHEN_HANDLED, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        assert proc.stdout.readline() == "ready\n"  # blocks until the handler is in place: no sleep
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "aborted" in err and "Traceback" not in out + err
    assert not list(tmp_path.iterdir())


def test_report_options_bounds_in_the_library():
    """Defect 12/16: the report's API refuses what the CLI refuses."""
    from synthface.errors import InvalidInputError
    from synthface.report import ReportOptions

    for bad in ({"leak_cos": float("nan")}, {"thresholds": (0.3, 1.0)}, {"impostor_images": 1}, {"seed": -1},
                {"max_genuine_pairs": -1}, {"sheet_images": 10**6}):  # 0 genuine pairs: skipped
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            ReportOptions(**bad)


def test_auto_device_is_this_processs_gpu_under_a_launcher(monkeypatch):
    import torch

    from synthface.devices import resolve_device

    assert resolve_device("auto", local_rank=1) == torch.device("cpu")  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device(None) == torch.device("cuda")
