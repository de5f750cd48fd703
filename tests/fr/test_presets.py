"""Training presets and head settings: the published recipes' fields and parameter counts, `--set head=adaface`
through the strict schema, config.json's record, the checkpoint layout, and a logged loss recomputed from the
checkpoint with an independent AdaFace formula (as the issue's bar does)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import InvalidInputError
from synthface.export import Sample, write_format
from synthface.fr.backbones import IResNet, backbone_from_state_dict, count_parameters
from synthface.fr.data import TrainingSet, open_source
from synthface.fr.settings import PRESET_NOTES, PRESETS, TrainConfig, preset_config
from synthface.fr.train import CHECKPOINT, MODEL, load_metrics, train
from tests.cli_helpers import run_cli_inprocess
from tests.helpers.adaface import reference_adaface

pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_presets_fields_and_parameter_counts():
    ada = PRESETS["adaface-ir50"]
    assert (ada.network, ada.layout, ada.se, ada.se_residual, ada.dropout) == ("r50", "ir", False, False, 0.4)
    assert (ada.head, ada.scale, ada.adaface_margin, ada.adaface_h, ada.adaface_t_alpha) == ("adaface", 64.0, 0.4, 0.333, 0.01)
    assert (ada.lr, ada.momentum, ada.weight_decay, ada.bn_weight_decay, ada.epochs) == (0.1, 0.9, 5e-4, False, 26)
    # AdaFace's MultiStepLR(12, 20, 24) steps once per finished epoch: / 10 entering 1-based epochs 13, 21, 25
    assert (ada.schedule, ada.milestones, ada.gamma, ada.batch_size, ada.precision) == ("step", (13, 21, 25), 0.1, 256, "fp16")
    assert (ada.clip_grad_norm, ada.seed, ada.augment) == (0.0, 42, "adaface")
    counts = {"adaface-ir50": 43_585_600, "adaface-irse50": 43_808_320, "sota-fr-irse50": 43_634_368,
              "arcface-torch": 43_590_848}
    for name, count in counts.items():
        assert count_parameters(IResNet.on_meta(PRESETS[name].backbone())) == count, name
    assert PRESETS["adaface-irse50"].to_dict() == {**ada.to_dict(), "se_residual": True}
    assert PRESETS["sota-fr-irse50"] == PRESETS["hsface10k"]  # Vec2Face's SOTA-FR recipe under the name
    sota = PRESETS["sota-fr-irse50"]
    assert (sota.se, sota.layout, sota.head, sota.arc_margin, sota.augment) == (True, "iresnet", "margin", 0.5, "hsface")


def test_every_preset_is_documented_with_its_source_and_numbers():
    assert set(PRESET_NOTES) == set(PRESETS)
    for name in ("adaface-ir50", "sota-fr-irse50", "hsface10k"):
        assert "Source:" in PRESET_NOTES[name] and re.search(r"\d\d\.\d\d", PRESET_NOTES[name]), name
    assert all(n in PRESET_NOTES["adaface-ir50"] for n in ("89.56", "91.73", "92.30", "94.68", "mk-minchul/AdaFace"))
    assert all(n in PRESET_NOTES["sota-fr-irse50"] for n in ("92.00", "98.87", "89.94", "RandomErasing"))


def test_set_head_adaface_goes_through_the_strict_schema():
    config = preset_config("tiny", sets=["head=adaface"])
    assert (config.head, config.adaface_margin, config.adaface_h, config.adaface_t_alpha) == ("adaface", 0.4, 0.333, 0.01)
    assert config.head_settings() == {"name": "adaface", "scale": 16.0, "margin": 0.4, "h": 0.333, "t_alpha": 0.01}
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert PRESETS["tiny"].head_settings()["name"] == "margin"
    with pytest.raises(InvalidInputError, match="head must be one of 'margin' or 'adaface'"):
        preset_config("tiny", sets=["head=arcface"])
    with pytest.raises(InvalidInputError, match="adaface_t_alpha"):
        preset_config("tiny", sets=["head=adaface", "adaface_t_alpha=0"])
    with pytest.raises(InvalidInputError, match="scores every class"):
        preset_config("tiny", sets=["head=adaface", "sample_rate=0.5"])
    with pytest.raises(InvalidInputError, match="at least 2 images"):
        preset_config("tiny", sets=["head=adaface", "batch_size=1"])
    with pytest.raises(InvalidInputError, match="layout"):
        preset_config("tiny", sets=["layout=irse"])
    with pytest.raises(InvalidInputError, match="adaface_margin"):
        preset_config("tiny", sets=["adaface_margin=true"])  # strict: a bool is not a number


def imagefolder(tmp_path, classes=4, per_class=8):
    rng = np.random.default_rng(3)
    samples = []
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for k in range(per_class):
            img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=95)
            samples.append(Sample(c, f"{c}_{k}", buf.getvalue()))
    return write_format("imagefolder", samples, tmp_path / "data").out_dir


def test_adaface_run_records_settings_keeps_the_layout_and_logs_the_reference_loss(tmp_path):
    """The bar's check: 32 images, tiny preset, augment none, one batch of the whole set; step 2's logged loss
    equals the independent AdaFace formula on step 1's checkpoint (backbone in training mode, as the loop runs it)."""
    data = imagefolder(tmp_path)
    config = preset_config("tiny", sets=["head=adaface", "augment=none", "batch_size=32", "log_every=1", "widths=[8, 8, 16, 16]"])
    run = tmp_path / "run"
    train(data, run, config, max_steps=1, progress=False, device="cpu")
    step1 = torch.load(run / CHECKPOINT, weights_only=True)
    train(data, run, config, max_steps=2, resume=True, progress=False, device="cpu")

    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["head"] == "adaface" and saved["train"]["adaface_h"] == 0.333
    assert saved["head"] == {"name": "adaface", "scale": 16.0, "margin": 0.4, "h": 0.333, "t_alpha": 0.01}
    heads = sorted(k for k in step1["model"] if not k.startswith("backbone."))
    assert heads == ["head.batch_mean", "head.batch_std", "head.kernel"]
    assert step1["model"]["head.kernel"].shape == (64, 4)  # (D, C)
    assert step1["model"]["head.batch_mean"].shape == (1,) and step1["model"]["head.batch_mean"].item() != 20.0

    backbone = IResNet(config.backbone())
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in step1["model"].items() if k.startswith("backbone.")})
    dataset = TrainingSet(open_source(data), "none", config.input_size, config.seed)
    items = [dataset.item(i, 1) for i in range(len(dataset))]
    x = torch.from_numpy(np.stack([a for a, _ in items]))
    labels = torch.tensor([label for _, label in items])
    with torch.no_grad():
        embeddings = backbone.train()(x)  # raw: the head normalises
    expected, _, _ = reference_adaface(embeddings, step1["model"]["head.kernel"], labels,
                                       step1["model"]["head.batch_mean"].item(), step1["model"]["head.batch_std"].item(),
                                       s=16.0, m=0.4, h=0.333, t_alpha=0.01)
    logged = {m["step"]: m["loss"] for m in load_metrics(run)}
    assert abs(logged[2] - expected.item()) < 1e-5, (logged, expected.item())


def test_ir_se_layout_trains_and_its_model_loads_back(tmp_path, capsys):
    data = imagefolder(tmp_path, per_class=4)
    out = run_cli_inprocess(capsys, "train", data, "--out", tmp_path / "run", "--preset", "tiny", "--max-steps", "2",
                            "--no-progress", "--device", "cpu", "--set", "head=adaface", "--set", "layout=ir",
                            "--set", "se_residual=true", "--set", "batch_size=8", "--set", "widths=[16, 16, 32, 32]")
    assert out.returncode == 0, out.output
    state = torch.load(tmp_path / "run" / MODEL, weights_only=True)
    assert "features.weight" not in state and "layer1.0.se_block.fc1.weight" in state
    model = backbone_from_state_dict(state)
    assert model.config.layout == "ir" and model.config.se_residual
    assert json.loads((tmp_path / "run" / "config.json").read_text())["head"]["name"] == "adaface"


def test_a_run_from_before_the_head_and_layout_settings_resumes(tmp_path):
    """config.json written before `head`, `adaface_*`, `layout` and `se_residual` existed meant their defaults."""
    data = imagefolder(tmp_path, per_class=4)
    config = preset_config("tiny", sets=["batch_size=8", "widths=[8, 8, 16, 16]", "input_size=16"])
    run = tmp_path / "run"
    train(data, run, config, max_steps=1, progress=False, device="cpu")
    saved = json.loads((run / "config.json").read_text())
    new = ("head", "adaface_margin", "adaface_h", "adaface_t_alpha", "layout", "se_residual")
    saved["train"] = {k: v for k, v in saved["train"].items() if k not in new}
    del saved["head"]
    (run / "config.json").write_text(json.dumps(saved))
    assert train(data, run, config, max_steps=2, resume=True, progress=False, device="cpu").steps == 2
    with pytest.raises(InvalidInputError, match="head"):
        train(data, run, preset_config("tiny", sets=["batch_size=8", "widths=[8, 8, 16, 16]", "input_size=16",
                                                     "head=adaface"]), resume=True, progress=False, device="cpu")


def test_train_help_names_every_preset():
    from synthface.cli.train import PRESET_HELP

    missing = [name for name in PRESETS if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", PRESET_HELP)]
    assert not missing, missing
