"""`synthface train A B ...`: several sources with disjoint labels, per-source weights composing each epoch as
synthface.fr.mixing documents (re-derived here from the rule), per-source counts in config.json, resume
checks every source, and the refusals."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import InvalidInputError
from synthface.export import Sample, write_format
from synthface.fr.data import TrainingSet, epoch_order
from synthface.fr.mixing import open_mix
from synthface.seeds import EPOCH_ORDER_STREAM
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")


def jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def samples(seed: int, classes: int, per_class: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(c, f"{seed}_{c}_{k}", jpeg(rng)) for c in range(classes) for k in range(per_class)]


@pytest.fixture()
def two(tmp_path):
    """A: a webdataset export, 3 classes x 4 images; B: a RecordIO in insightface's header layout without
    synthface's keys.tsv (as CASIA-WebFace's train.rec / train.idx / property come), 2 classes x 5 images."""
    a = write_format("webdataset", samples(1, 3, 4), tmp_path / "synthA").out_dir
    b = write_format("recordio", samples(2, 2, 5), tmp_path / "casia", layout="header").out_dir
    (b / "keys.tsv").unlink()
    return a, b


def test_labels_are_disjoint_and_images_come_from_their_source(two):
    a, b = two
    mix = open_mix([a, b])
    one_a, one_b = open_mix(a).source, open_mix(b).source
    src = mix.source
    assert (len(src), src.num_classes) == (22, 5)
    assert np.array_equal(src.labels, np.concatenate([one_a.labels, one_b.labels + 3]))  # B's classes after A's 3
    for i in (0, 11, 12, 21):
        data, label = src.read(i)
        expected = one_a.read(i) if i < 12 else (one_b.read(i - 12)[0], one_b.read(i - 12)[1] + 3)
        assert (data, label) == expected
    assert "source 2 of 2" in src.where(12) and str(b) in src.where(12)


def reference_order(sizes, weights, seed, epoch):
    """The documented rule, re-derived: floor(w) passes, a fresh draw of round(frac(w) n) (halves up) from
    stream (seed, epoch, STREAM, k + 1), ids image + copy x N, one shuffle by (seed, epoch, STREAM)."""
    total, pool, start = sum(sizes), [], 0
    for k, (n, w) in enumerate(zip(sizes, weights)):
        passes = int(w // 1)
        for copy in range(passes):
            pool += [start + j + copy * total for j in range(n)]
        extra = int(math.floor(w * n + 0.5)) - passes * n
        perm = np.random.default_rng((seed, epoch, EPOCH_ORDER_STREAM, k + 1)).permutation(n)
        pool += [start + int(j) + passes * total for j in perm[:extra]]
        start += n
    shuffle = np.random.default_rng((seed, epoch, EPOCH_ORDER_STREAM)).permutation(len(pool))
    return np.array(pool)[shuffle]


def test_an_epoch_is_composed_by_the_weights_exactly_as_documented(two):
    a, b = two
    mix = open_mix([a, b], weights={"synthA": 1.5, str(b): 0.5})
    assert mix.counts == (18, 5) and mix.epoch_size == 23  # 12 x 1.5; 10 x 0.5
    for epoch in (0, 1):
        order = mix.order(7, epoch)
        assert np.array_equal(order, reference_order([12, 10], [1.5, 0.5], 7, epoch))
        images, copies = order % 22, order // 22
        assert np.bincount(images[images < 12], minlength=12).tolist().count(2) == 6  # half of A twice
        assert (copies[images >= 12] == 0).all() and len(set(images[images >= 12])) == 5
    assert set(mix.order(7, 0) % 22) != set(mix.order(7, 1) % 22)  # the fractions are drawn afresh each epoch
    # two processes, batches of 4: every 2nd batch slot each, the 23 - 16 tail dropped
    full = reference_order([12, 10], [1.5, 0.5], 7, 0)[:16].reshape(-1, 2, 4)
    for rank in (0, 1):
        assert np.array_equal(mix.order(7, 0, rank=rank, world=2, batch_size=4), full[:, rank].reshape(-1))
    # weight 1 everywhere: the single-source permutation over all images
    assert np.array_equal(open_mix([a, b]).order(3, 2, batch_size=5), epoch_order(22, 3, 2, batch_size=5))
    assert np.array_equal(open_mix(a).order(3, 2), epoch_order(12, 3, 2))


def test_an_images_extra_copy_draws_its_own_augmentation(two):
    data = TrainingSet(open_mix(two[0]).source, augment="hsface", input_size=16, seed=0)
    first, again, copy = data.item(3, 0), data.item(3, 0), data.item(3, 0, repeat=1)
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], copy[0]) and first[1] == copy[1]


def train_args(*data, out, extra=()):
    return ("train", *data, "--out", out, "--preset", "tiny", "--set", "batch_size=4", "--set", "widths=[8,8,16,16]",
            "--set", "input_size=16", "--set", "num_features=16", "--set", "epochs=2", "--no-progress", *extra)


def test_train_on_two_sources_records_them_and_resume_checks_each(two, tmp_path, capsys):
    a, b = two
    run = tmp_path / "run"
    result = run_cli_inprocess(capsys, *train_args(a, b, out=run, extra=("--weight", "casia=2", "--max-steps", "3")))
    assert result.returncode == 0, result.output
    data = json.loads((run / "config.json").read_text())["data"]
    assert (data["num_images"], data["num_classes"], data["samples_per_epoch"]) == (22, 5, 32)
    assert [(s["num_images"], s["num_classes"], s["label_offset"], s["weight"], s["samples_per_epoch"], s["format"])
            for s in data["sources"]] == [(12, 3, 0, 1.0, 12, "webdataset"), (10, 2, 3, 2.0, 20, "recordio")]
    assert data["sources"][1]["path"] == str(b.resolve())
    head = torch.load(run / "checkpoint.pt", weights_only=False)["model"]["head.weight"]
    assert head.shape[0] == 5  # one centre per class of both sources

    refused = run_cli_inprocess(capsys, *train_args(a, b, out=run, extra=("--weight", "casia=1", "--resume")))
    assert_clean_refusal(refused, 2, "started on another data set", "source 2", "weight 2.0", "weight 1.0")
    refused = run_cli_inprocess(capsys, *train_args(b, a, out=run, extra=("--weight", "casia=2", "--resume")))
    assert_clean_refusal(refused, 2, "started on another data set", "source 1")
    refused = run_cli_inprocess(capsys, *train_args(a, out=run, extra=("--resume",)))
    assert_clean_refusal(refused, 2, "2 source(s)", "now 1")
    resumed = run_cli_inprocess(capsys, *train_args(a, b, out=run, extra=("--weight", "casia=2", "--resume")))
    assert resumed.returncode == 0, resumed.output
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2 * (32 // 4)


@pytest.mark.parametrize(
    "sources, extra, needles",
    [
        (lambda a, b: (a, a), (), ["are the same export", "--weight source=2"]),
        (lambda a, b: (a, b), ("--weight", "nowhere=2"), ["--weight nowhere=... names no source", "synthA"]),
        (lambda a, b: (a, b), ("--weight", "casia=-1"), ["weight of", "above 0"]),
        (lambda a, b: (a, b), ("--weight", "casia"), ["is not source=w"]),
        (lambda a, b: (a, b), lambda a, b: ("--weight", "casia=1", "--weight", f"{b}=2"), ["two weights"]),
        (lambda a, b: (a,), ("--weight", "synthA=2"), ["only weighs a source against others", "--set epochs"]),
        (lambda a, b: (a, b), ("--weight", "casia=0.01"), ["would give no sample an epoch"]),
    ],
    ids=["twice", "unknown source", "negative", "no value", "two weights", "one source", "rounds to 0"],
)
def test_mixing_refusals_leave_no_run_folder(two, tmp_path, capsys, sources, extra, needles):
    run = tmp_path / "run"
    extra = extra(*two) if callable(extra) else extra
    result = run_cli_inprocess(capsys, *train_args(*sources(*two), out=run, extra=extra))
    assert_clean_refusal(result, InvalidInputError.exit_code, *needles)
    assert not run.exists()
