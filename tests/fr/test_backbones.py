"""IResNet: arcface_torch's parameter counts and state-dict names, the frozen feature BN, shapes, SE gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.backbones import (
    DEPTHS,
    BackboneConfig,
    IResNet,
    backbone_from_state_dict,
    config_from_state_dict,
    count_parameters,
    iresnet,
)

# Names and shapes of arcface_torch's iresnet50/iresnet100 state dicts, in order (a data fixture).
REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "iresnet_state_dict.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> IResNet:
    return iresnet("r18", widths=(16, 16, 32, 32), num_features=24, input_size=32, **kw)


@pytest.mark.parametrize(("name", "se", "count"), [
    ("r50", False, 43_590_848), ("r100", False, 65_156_160), ("r50", True, 43_634_368),
])
def test_published_parameter_counts(name, se, count):
    model = IResNet.on_meta(BackboneConfig(DEPTHS[name], se=se))
    assert count_parameters(model) == count
    assert model.config.name == name + ("-se" if se else "")


@pytest.mark.parametrize("name", ["r50", "r100"])
def test_state_dict_names_and_shapes_equal_arcface_torch(name):
    got = [[k, list(v.shape)] for k, v in IResNet.on_meta(BackboneConfig(DEPTHS[name])).state_dict().items()]
    assert got == REFERENCE[name]
    assert len(got) == {"r50": 475, "r100": 925}[name]


def test_se_variant_adds_gates_only_to_each_stages_first_block():
    keys = IResNet.on_meta(BackboneConfig(DEPTHS["r50"], se=True)).state_dict()
    attn = sorted(k for k in keys if ".attn." in k)
    assert attn == sorted(f"layer{s}.0.attn.fc{i}.weight" for s in range(1, 5) for i in (1, 2))
    assert tuple(keys["layer3.0.attn.fc1.weight"].shape) == (16, 256, 1, 1)
    assert tuple(keys["layer3.0.attn.fc2.weight"].shape) == (256, 16, 1, 1)


def test_se_gate_scales_the_shortcut_not_the_residual_branch():
    torch.manual_seed(0)
    model = tiny(se=True).eval()
    block = model.layer1[0]
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        block.attn.fc2.weight.zero_()  # gate = sigmoid(0) = 1/2 everywhere
        with_gate = block(x)
        block.attn = None
        without = block(x)
        shortcut = block.downsample(x)
    torch.testing.assert_close(without - with_gate, shortcut / 2)


def test_feature_bn_weight_is_frozen_at_one_through_training():
    torch.manual_seed(0)
    model = tiny().train()
    assert not model.features.weight.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(model.features.weight, torch.ones(24))
    assert model.features.weight.grad is None


def test_forward_shapes_at_112_and_stride_on_the_second_conv():
    model = iresnet("r18", widths=(8, 8, 16, 16), num_features=32).eval()
    assert model.fc.in_features == 16 * 7 * 7
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.downsample[0].stride == (2, 2)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 112, 112)).shape == (3, 32)
    assert iresnet("r50").fc.in_features == 25088


def test_head_runs_in_float32_under_autocast():
    model = tiny().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_architecture_is_read_back_from_the_keys():
    torch.manual_seed(1)
    model = tiny(se=True).eval()
    config = config_from_state_dict(model.state_dict())
    assert config == BackboneConfig((2, 2, 2, 2), (16, 16, 32, 32), 24, 32, True, 0.0, 16)
    loaded = backbone_from_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    full = config_from_state_dict(IResNet.on_meta(BackboneConfig(DEPTHS["r100"])).state_dict())
    assert full.name == "r100" and full.input_size == 112 and full.num_features == 512


def test_other_architectures_are_refused_with_a_paragraph():
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64), "fc.weight": torch.zeros(10, 512)}
    with pytest.raises(FileFormatError, match="not an IResNet backbone"):
        config_from_state_dict(resnet_like, source="x.pt")
    wrapped = {"module." + k: v for k, v in tiny().state_dict().items()}
    with pytest.raises(FileFormatError, match="module"):
        config_from_state_dict(wrapped)
    broken = dict(tiny().state_dict())
    broken["layer2.0.bn2.weight"] = torch.zeros(3)
    with pytest.raises(FileFormatError, match="wrong shape: layer2.0.bn2.weight"):
        config_from_state_dict(broken)


def test_bad_configs_are_refused():
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        BackboneConfig(input_size=100)
    with pytest.raises(InvalidInputError, match="depth"):
        iresnet("r52")
