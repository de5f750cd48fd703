"""Training loop: the HSFace schedule, weight-decay groups, presets, settings, exact resume after a stop or a kill."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import InvalidInputError, OutputPathError
from synthface.export import Sample, write_format
from synthface.fr.backbones import IResNet, count_parameters
from synthface.fr.train import (
    CHECKPOINT,
    MODEL,
    PRESETS,
    TrainConfig,
    learning_rate,
    load_metrics,
    parameter_groups,
    parse_overrides,
    preset_config,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hsface_learning_rate_at_every_epoch():
    config = PRESETS["hsface10k"]
    spe = 7
    per_epoch = [learning_rate(config, (e - 1) * spe + k, spe) for e in range(1, 27) for k in (0, spe - 1)]
    expected = [0.1] * 11 + [0.01] * 8 + [0.001] * 4 + [0.0001] * 3  # / 10 entering epochs 12, 20, 24 (1-based)
    assert per_epoch == pytest.approx([lr for lr in expected for _ in (0, 1)], rel=1e-12)


def test_poly_schedule_warms_up_linearly_then_decays_to_zero():
    config = TrainConfig(schedule="poly", lr=0.1, epochs=10, warmup_epochs=2)
    spe = 10
    assert learning_rate(config, 0, spe) == 0.0
    assert learning_rate(config, 10, spe) == pytest.approx(0.05)
    assert learning_rate(config, 20, spe) == pytest.approx(0.1)
    assert learning_rate(config, 60, spe) == pytest.approx(0.05)
    assert learning_rate(config, 99, spe) == pytest.approx(0.1 / 80)
    assert PRESETS["arcface-torch"].schedule == "poly" and PRESETS["arcface-torch"].augment == "flip"


def test_no_weight_decay_on_batchnorm_and_the_frozen_feature_weight_is_left_out():
    model = IResNet(PRESETS["tiny"].backbone())
    head = torch.nn.Linear(2, 2)
    decay, no_decay = parameter_groups([model, head], 5e-4, bn_weight_decay=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.bn1.weight) in ids and id(model.layer1[0].bn3.bias) in ids and id(model.features.bias) in ids
    assert id(model.prelu.weight) not in ids and id(head.weight) in {id(p) for p in decay["params"]}
    trainable = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert trainable == count_parameters(model) - model.features.weight.numel() + 6
    everything = parameter_groups([model], 5e-4, bn_weight_decay=True)
    assert all(g["weight_decay"] == 5e-4 for g in everything)


def test_presets_and_settings():
    hs = PRESETS["hsface10k"]
    assert (hs.network, hs.se, hs.dropout, hs.arc_margin, hs.scale, hs.lr, hs.epochs, hs.batch_size) == ("r50", True, 0.4, 0.5, 64.0, 0.1, 26, 128)
    assert (hs.augment, hs.precision, hs.seed, hs.bn_weight_decay, hs.gradient) == ("hsface", "fp16", 42, False, "straight-through")
    assert count_parameters(IResNet.on_meta(hs.backbone())) == 43_634_368
    config = preset_config("tiny", parse_overrides(["lr=0.5", "milestones=[2, 3]", "augment=hsface", "se=true"]))
    assert (config.lr, config.milestones, config.augment, config.se) == (0.5, (2, 3), "hsface", True)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidInputError, match="learning_rate is not a training setting"):
        preset_config("tiny", {"learning_rate": 1})
    with pytest.raises(InvalidInputError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(InvalidInputError, match="precision"):
        preset_config("tiny", {"precision": "fp8"})
    with pytest.raises(InvalidInputError, match="Unknown preset"):
        preset_config("huge")


# ----------------------------------------------------------------------------------------------- resume


def small_export(tmp_path, classes=4, per_class=8):
    rng = np.random.default_rng(0)
    samples = []
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for k in range(per_class):
            img = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG")
            samples.append(Sample(c, f"{c}_{k}", buf.getvalue()))
    return write_format("webdataset", samples, tmp_path / "data").out_dir


# dropout and class sampling draw from torch's RNG, so an exact resume must restore it
RESUME = preset_config("tiny", {"epochs": 3, "batch_size": 8, "dropout": 0.2, "sample_rate": 0.5, "log_every": 2, "milestones": [2],
                                "widths": [8, 8, 16, 16], "input_size": 16, "num_features": 16})


class Killed(Exception):
    pass


def test_stopped_and_killed_runs_resume_to_the_same_weights(tmp_path):
    data = small_export(tmp_path)  # 32 images, 4 steps per epoch, 12 in all
    through = train(data, tmp_path / "a", RESUME, progress=False)
    assert through.steps == 12
    reference = torch.load(tmp_path / "a" / MODEL)

    stopped = train(data, tmp_path / "b", RESUME, max_steps=3, progress=False)  # mid-epoch stop: checkpoint at step 3
    assert stopped.steps == 3 and torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 3
    with pytest.raises(OutputPathError, match="--resume"):
        train(data, tmp_path / "b", RESUME, progress=False)
    train(data, tmp_path / "b", RESUME, resume=True, progress=False)

    def kill_at_step_7(step, loss):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):  # killed in epoch 2, after epoch 1's checkpoint (step 4)
        train(data, tmp_path / "c", RESUME, progress=False, on_step=kill_at_step_7)
    assert torch.load(tmp_path / "c" / CHECKPOINT, weights_only=False)["step"] == 4
    resumed = train(data, tmp_path / "c", RESUME, resume=True, progress=False)
    assert resumed.steps == 12

    for run in ("b", "c"):
        state = torch.load(tmp_path / run / MODEL)
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference), run
    # the killed run's lines after its checkpoint are dropped and redone: its metrics equal the
    # uninterrupted run's line for line, images/s aside
    def strip(run):
        return [{k: v for k, v in m.items() if k != "images_per_s"} for m in load_metrics(tmp_path / run)]

    assert strip("c") == strip("a") and [m["step"] for m in strip("a")] == [2, 4, 6, 8, 10, 12]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["data"]["num_classes"] == 4
    with pytest.raises(InvalidInputError, match="other settings"):
        train(data, tmp_path / "c", preset_config("tiny"), resume=True, progress=False)


def test_bf16_autocast_on_cpu_trains_and_saves_float32(tmp_path):
    data = small_export(tmp_path)
    config = preset_config("tiny", {"precision": "bf16", "batch_size": 8, "widths": [8, 8, 16, 16], "input_size": 16})
    result = train(data, tmp_path / "run", config, max_steps=4, progress=False)
    assert result.steps == 4 and np.isfinite(result.last_loss)
    state = torch.load(tmp_path / "run" / MODEL)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
