"""`synthface ids sample|verify` run as a user runs them: exit codes, tables, files, errors (refusals in
process: a subprocess start adds nothing to what they check)."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.identity import load_bank
from tests.cli_helpers import assert_clean_refusal, run_cli, run_cli_inprocess


def test_sample_then_verify(tmp_path):
    out = tmp_path / "ids.safetensors"
    result = run_cli("ids", "sample", "--num", "2000", "--max-cos", "0.3", "--seed", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "2000 x 512" in result.stdout and "threshold 0.3" in result.stdout
    bank = load_bank(out)
    assert bank.vectors.shape == (2000, 512) and bank.seed == 5
    g = bank.vectors @ bank.vectors.T
    np.fill_diagonal(g, -1)
    assert g.max() <= 0.3
    # The exact maximum comes from the cosines recorded while sampling: no second pass by default.
    printed_max = float(result.stdout.split("max pairwise cosine")[1].split()[1])
    assert printed_max == pytest.approx(g.max(), abs=1e-4)
    assert "recorded while sampling" in result.stdout and "verify time" not in result.stdout
    np.testing.assert_allclose(bank.nearest_cos, g.max(axis=1), atol=1e-6)
    assert not (tmp_path / "ids.safetensors.checkpoint").exists()

    check = run_cli("ids", "verify", out, "--bins", "4")
    assert check.returncode == 0, check.stderr
    assert "0.3 (holds)" in check.stdout and "nearest-neighbour cosine" in check.stdout


def test_gaussian_prior_with_reference_and_exclusion(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ref.npy", rng.standard_normal((300, 512)) * np.exp(-np.arange(512) / 200))
    np.save(tmp_path / "real.npy", rng.standard_normal((50, 512)))
    out = tmp_path / "ids.safetensors"
    result = run_cli(
        "ids", "sample", "--num", "300", "--max-cos", "0.4", "--prior", "gaussian",
        "--reference", tmp_path / "ref.npy", "--exclude", tmp_path / "real.npy",
        "--exclude-max-cos", "0.2", "--out", out,
    )
    assert result.returncode == 0, result.stderr
    bank = load_bank(out)
    real = np.load(tmp_path / "real.npy")
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    assert bank.prior.name == "gaussian" and bank.num_excluded == 50
    assert (bank.vectors @ real.T).max() <= 0.2


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--num", "0", "--max-cos", "0.3"], 2, "n must be a positive integer"),
        (["--num", "10", "--max-cos", "1.5"], 2, "strictly between -1 and 1"),
        (["--num", "100", "--max-cos", "-0.5"], 3, "Raise --max-cos"),
        (["--num", "10", "--max-cos", "0.3", "--prior", "gaussian"], 2, "fitted to reference embeddings"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_paragraph(tmp_path, capsys, args, code, message):
    result = run_cli_inprocess(capsys, "ids", "sample", *args, "--out", tmp_path / "ids.safetensors")
    assert_clean_refusal(result, code, message)
    assert not (tmp_path / "ids.safetensors").exists()


def test_bad_files(tmp_path, capsys):
    (tmp_path / "empty.npy").write_bytes(b"")
    nan = np.ones((20, 512))
    nan[4, 7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "short.npy", np.ones((20, 128)))
    out = tmp_path / "ids.safetensors"
    cases = [
        (["--reference", tmp_path / "empty.npy", "--prior", "gaussian"], "not a readable .npy"),
        (["--reference", tmp_path / "nan.npy", "--prior", "gaussian"], "NaN or inf"),
        (["--exclude", tmp_path / "short.npy"], "dimension 128 but 512"),
    ]
    for extra, message in cases:
        result = run_cli_inprocess(capsys, "ids", "sample", "--num", "5", "--max-cos", "0.3", *extra, "--out", out)
        assert_clean_refusal(result, 2, message)
        assert not out.exists()
    missing = tmp_path / "no" / "ids.safetensors"
    result = run_cli_inprocess(capsys, "ids", "sample", "--num", "5", "--max-cos", "0.3", "--out", missing)
    assert_clean_refusal(result, 2, "does not exist")
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage that is not safetensors")
    assert_clean_refusal(run_cli_inprocess(capsys, "ids", "verify", tmp_path / "corrupt.safetensors"), 2,
                         "not a readable safetensors")


def test_sample_with_verify_runs_the_independent_check(tmp_path):
    out = tmp_path / "ids.safetensors"
    result = run_cli("ids", "sample", "--num", "500", "--max-cos", "0.4", "--dim", "64", "--verify", "--out", out)
    assert result.returncode == 0, result.stderr
    recorded = float(result.stdout.split("max pairwise cosine")[1].split()[1])
    independent = float(result.stdout.split("independent check")[1].split("max pairwise cosine")[1].split()[0])
    assert recorded == independent and "verify time" in result.stdout


def test_checkpoint_of_other_arguments_is_refused(tmp_path, capsys):
    from synthface.identity.sample import _write_checkpoint, sample_identities
    from synthface.identity.separation import BankState

    out = tmp_path / "ids.safetensors"
    # A checkpoint left by `--seed 1`, then the command run with --seed 2 next to it.
    checkpoint = out.with_name(out.name + ".checkpoint")
    rng = np.random.default_rng(0)
    state = BankState.allocate(10, 8, __import__("torch").device("cpu"))
    state.restore(sample_identities(3, max_cos=0.9, dim=8).vectors, np.zeros(3, np.float32))
    args = dict(n=10, max_cos=repr(0.9), dim=8, seed=1)
    _write_checkpoint(checkpoint, args, state, 4096, rng)
    result = run_cli_inprocess(capsys, "ids", "sample", "--num", "10", "--max-cos", "0.9", "--dim", "8", "--seed", "2",
                               "--out", out)
    assert_clean_refusal(result, 2, "seed 1 (now 2)", "delete the checkpoint")
    assert not out.exists() and checkpoint.exists()
