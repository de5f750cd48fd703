"""Bad inputs to `synthface train`: settings, --out folders, damaged run files, other data, full disks.
Each is a clear refusal (exit code, a message naming the problem and the fix, no traceback) that
writes nothing blocking the fix it suggests; following that fix then works."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.export import Sample, write_format
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

# the tiny preset cut to a 16 px, 8-wide model: 4 steps per epoch on 32 images, 8 in all, a second or two
SMALL = ["batch_size=8", "widths=[8, 8, 16, 16]", "input_size=16", "num_features=16", "epochs=2", "log_every=2",
         "milestones=[2]"]
SMALL_ARGS = [a for item in SMALL for a in ("--set", item)]


def images(seed: int, classes: int = 4, per_class: int = 8) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for k in range(per_class):
            img = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG")
            samples.append(Sample(c, f"{c}_{k}", buf.getvalue()))
    return samples


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_format("recordio", images(0), tmp_path_factory.mktemp("train_data") / "set").out_dir


def train_args(data: Path, out: Path, *extra) -> list:
    return ["train", data, "--out", out, "--preset", "tiny", *SMALL_ARGS, "--no-progress", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("item", "needles"), [
    ("lr=1e400", ("--set lr=1e400", "lr must be a finite number", "positive and at most 10", "learning rate")),
    ("epochs=2.5", ("--set epochs=2.5", "epochs must be a valid integer", "whole number from 1 to 10,000", "passes over")),
    ("epochs=true", ("--set epochs=true", "epochs must be a valid integer", "from 1 to 10,000")),
    ("arc_margin=NaN", ("--set arc_margin=nan", "arc_margin must be a valid number", "at least 0 and at most 3.14159",
                        "angular margin")),
    ("arc_margin=nan", ("arc_margin must be a finite number",)),
    ("se=yes", ("--set se=yes", "se must be a valid boolean", "true or false", "squeeze-excitation")),
    ("grad_scaler_growth_interval=0", ("grad_scaler_growth_interval must be greater than or equal to 1",
                                       "from 1 to 1,000,000", "loss scale")),
    ("batch_size=2.5", ("batch_size must be a valid integer", "from 1 to 65,536", "images per optimiser step")),
    ("seed=-1", ("seed must be greater than or equal to 0", "from 0 to 2**63 - 1", "data order")),
    ("input_size=100000", ("input_size must be less than or equal to 1024", "a multiple of 16", "pixels")),
    ("input_size=40", ("input_size must be a multiple of 16",)),
    ("learning_rate=0.1", ("--set learning_rate=0.1", "not a training setting", "check the spelling", "lr, momentum")),
    ("widths=[8, 8]", ("widths must list four stage widths",)),
    ("network=r51", ("network must be one of", "r50")),
    ("lr", ("must look like key=value", "--set lr=0.05")),
])
def test_bad_settings_are_refused_with_name_range_and_meaning(item, needles, data, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_cli_inprocess(capsys, *train_args(data, out, "--set", item))
    assert_clean_refusal(result, 2, *needles)
    assert not out.exists()


def test_a_set_typo_names_the_set_not_the_recipe_file(capsys, tmp_path):
    result = run_cli_inprocess(capsys, "run", "smoke", "--out", tmp_path / "run", "--set", "identities.cont=5")
    assert_clean_refusal(result, 2, "--set identities.cont=5", "identities.cont is not a recipe field")
    assert "smoke.toml" not in result.output and not (tmp_path / "run").exists()
    result = run_cli_inprocess(capsys, "run", "smoke", "--out", tmp_path / "run", "--set", "identities.count=0")
    assert_clean_refusal(result, 2, "--set identities.count=0", "from 1 to 10,000,000", "identities to sample")
    assert "smoke.toml" not in result.output


def test_valid_settings_parse_as_toml_and_saved_configs_still_load(tmp_path):
    from synthface.fr.train import PRESETS, TrainConfig, preset_config

    config = preset_config("tiny", sets=["lr=1", "milestones=[2, 3]", "augment=hsface", "se=true", "dropout=0"])
    assert (config.lr, config.milestones, config.augment, config.se, config.dropout) == (1.0, (2, 3), "hsface", True, 0.0)
    # a config.json written before the schema (JSON ints where floats are meant) loads to the same settings
    old = {**PRESETS["hsface10k"].to_dict(), "scale": 64, "warmup_epochs": 0, "power": 1}
    assert TrainConfig.from_dict(json.loads(json.dumps(old))) == PRESETS["hsface10k"]


# ----------------------------------------------------------------------------------------------- --out


def read_only(monkeypatch, folder: Path) -> None:
    """`folder` read-only for this user, also under root (which os.access would let write anywhere)."""
    folder.chmod(0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder and mode & os.W_OK else real(p, mode, **kw))


@pytest.mark.parametrize(("case", "needles"), [
    ("file", ("is a file, not a folder", "--out")),
    ("under-a-file", ("is a file, not a folder", "parents are folders")),
    ("device", ("/dev/null", "device")),
    ("too-long", ("too long for the file system", "shorter name")),
    ("read-only", ("read-only", "writable")),
])
def test_unusable_out_folders_are_refused(case, needles, data, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine\n")
    out = {"file": tmp_path / "notes.txt", "under-a-file": tmp_path / "notes.txt" / "run", "device": Path("/dev/null"),
           "too-long": tmp_path / ("r" * 300), "read-only": tmp_path / "locked" / "run"}[case]
    if case == "read-only":
        (tmp_path / "locked").mkdir()
        read_only(monkeypatch, tmp_path / "locked")
    before = snapshot(tmp_path)
    assert_clean_refusal(run_cli_inprocess(capsys, *train_args(data, out)), 2, *needles)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.txt"] + (["locked"] if case == "read-only" else []))


def test_a_refused_train_leaves_nothing_so_its_fix_works(data, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_cli_inprocess(capsys, *train_args(data, out, "--set", "batch_size=64"))
    assert_clean_refusal(result, 2, "fewer than one global batch", "--set batch_size=N")
    assert not out.exists()  # today: config.json, then "already holds files" and "other settings"
    result = run_cli_inprocess(capsys, *train_args(data, out, "--max-steps", "2"))
    assert result.returncode == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == 8


def test_a_full_disk_at_start_and_mid_run(data, tmp_path, capsys, monkeypatch):
    import synthface.fr.train as train_module

    out = tmp_path / "runs" / "a"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:  # config.json cannot be flushed
        patch.setattr(os, "fsync", no_space)
        result = run_cli_inprocess(capsys, *train_args(data, out))
    assert_clean_refusal(result, 2, "config.json", "No space left on device", "disk is full")
    assert not (tmp_path / "runs").exists()  # the folders it made are gone again

    class FullAfterFirstCheckpoint(io.FileIO):
        def write(self, b):
            if Path(self.name).name.startswith(".checkpoint.pt.") and (out / "checkpoint.pt").exists():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    def full_disk(path, mode):
        return FullAfterFirstCheckpoint(path, mode.replace("b", "")) if "b" in mode else open(path, mode)

    with monkeypatch.context() as patch:  # the disk fills after epoch 1's checkpoint
        patch.setattr(train_module, "_open", full_disk)
        result = run_cli_inprocess(capsys, *train_args(data, out))
    assert_clean_refusal(result, 2, "checkpoint.pt", "No space left on device", "disk is full")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    result = run_cli_inprocess(capsys, *train_args(data, out, "--resume"))  # space freed: the run goes on
    assert result.returncode == 0, result.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 8


# ----------------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> Path:
    """A run stopped at step 5 of 8 (checkpoints at the end of epoch 1 and at the stop; metrics at steps 2, 4, 5)."""
    from synthface.fr.train import preset_config, train

    out = tmp_path_factory.mktemp("stopped") / "run"
    train(data, out, preset_config("tiny", sets=SMALL), max_steps=5, progress=False)
    return out


def copy_run(stopped: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(stopped, tmp_path / "run"))


def test_resume_on_another_data_set_of_the_same_class_count_is_refused(stopped, tmp_path, capsys):
    other = write_format("recordio", images(1), tmp_path / "other").out_dir  # 4 classes x 8 images too
    run = copy_run(stopped, tmp_path)
    before = snapshot(run)
    result = run_cli_inprocess(capsys, *train_args(other, run, "--resume"))
    assert_clean_refusal(result, 2, "was started on another data set", "fingerprint", "in another --out folder")
    assert snapshot(run) == before


@pytest.mark.parametrize(("damage", "needles"), [
    ("config.json", ("config.json is damaged", "not json", "restore the file", "another --out")),
    ("checkpoint.pt", ("checkpoint.pt is damaged", "remove checkpoint.pt and resume again")),
    ("metrics.jsonl", ("metrics.jsonl is damaged", "line 2", "delete that line")),
])
def test_damaged_run_files_are_named_with_their_fix(damage, needles, data, stopped, tmp_path, capsys):
    run = copy_run(stopped, tmp_path)
    path = run / damage
    if damage == "metrics.jsonl":
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], '{"step": 4, "lo', *lines[1:]]) + "\n")
    else:
        path.write_bytes(path.read_bytes()[:40])
    before = snapshot(run)
    assert_clean_refusal(run_cli_inprocess(capsys, *train_args(data, run, "--resume")), 2, *needles)
    assert snapshot(run) == before
    if damage == "config.json":
        return  # its fix is a backup or another folder
    if damage == "checkpoint.pt":
        path.unlink()
    else:
        path.write_text("\n".join(lines) + "\n")
    result = run_cli_inprocess(capsys, *train_args(data, run, "--resume"))
    assert result.returncode == 0, result.output
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8


def test_an_oversized_image_met_in_a_worker_is_one_paragraph_and_leaves_no_run(tmp_path, capsys):
    samples = images(0)
    side = 5000  # over the 4096 x 4096 a training image may have, under PIL's own bomb limit
    big = bytearray(samples[3].jpeg)
    sof = big.find(b"\xff\xc0")
    big[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    samples[3] = Sample(samples[3].label, samples[3].key, bytes(big))
    data = write_format("recordio", samples, tmp_path / "set").out_dir
    out = tmp_path / "run"
    result = run_cli_inprocess(capsys, *train_args(data, out, "--set", "num_workers=1"))
    assert_clean_refusal(result, 2, "record", "5000x5000", "it was not decoded", "export the run again")
    assert "Original" not in result.output and "worker" not in result.output
    assert not out.exists()  # refused before the first checkpoint: the same command can run again at once


def test_a_run_saved_before_the_data_fingerprint_still_resumes(data, stopped, tmp_path, capsys):
    run = copy_run(stopped, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    del saved["data"]["fingerprint"]  # config.json as runs wrote it before the fingerprint
    (run / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    result = run_cli_inprocess(capsys, *train_args(data, run, "--resume"))
    assert result.returncode == 0, result.output
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8
