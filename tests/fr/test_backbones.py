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
from synthface.fr.irse import convert_ir_state_dict, iresnet_to_ir

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


# ------------------------------------------------------------- AdaFace / TFace IR and IR-SE (FR-EVAL.md section 5)


class RefSE(torch.nn.Module):
    """AdaFace's SEModule, from its description: mean pool, 1x1 conv down 16x, ReLU, 1x1 conv up, sigmoid, times x."""

    def __init__(self, c):
        super().__init__()
        self.fc1 = torch.nn.Conv2d(c, c // 16, 1, bias=False)
        self.fc2 = torch.nn.Conv2d(c // 16, c, 1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class RefIRBlock(torch.nn.Module):
    """BasicBlockIR(SE) under AdaFace's names: res_layer 0..5 (+ se_block), shortcut_layer a strided identity
    where the width does not change."""

    def __init__(self, cin, depth, stride, se):
        super().__init__()
        nn = torch.nn
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth),
                                       nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))
        if se:
            self.res_layer.add_module("se_block", RefSE(depth))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class RefIR(torch.nn.Module):
    """AdaFace's / TFace's IR (IR-SE) Backbone from the key names and FR-EVAL.md section 5; raw output (TFace)."""

    def __init__(self, units=(3, 4, 14, 3), widths=(64, 128, 256, 512), se=False, input_size=112, features=512):
        super().__init__()
        nn = torch.nn
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        blocks, cin = [], widths[0]
        for n, depth in zip(units, widths):
            blocks += [RefIRBlock(cin if j == 0 else depth, depth, 2 if j == 0 else 1, se) for j in range(n)]
            cin = depth
        self.body = nn.Sequential(*blocks)
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(cin * side * side, features), nn.BatchNorm1d(features, affine=False))

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


def randomised(model, seed=0):
    """Every parameter and BN statistic random (scaled by fan-in so activations stay O(1)), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


@pytest.mark.parametrize(("layers", "se", "count", "entries"), [
    ((3, 4, 14, 3), False, 43_585_600, 467), ((3, 4, 14, 3), True, 43_808_320, 515),
    ((2, 2, 2, 2), False, 24_020_352, 179), ((3, 4, 6, 3), False, 34_134_080, None),
    ((3, 13, 30, 3), False, 65_150_912, 917), ((3, 13, 30, 3), True, 65_523_136, None),
])
def test_ir_and_ir_se_parameter_counts(layers, se, count, entries):
    """FR-EVAL.md's measured counts, for synthface's IR layout and the IR net written here from the key names."""
    with torch.device("meta"):
        ref = RefIR(layers, se=se)
    mine = IResNet.on_meta(BackboneConfig(layers, layout="ir", se_residual=se))
    for model in (ref, mine):
        assert count_parameters(model) == count
        assert entries is None or len(model.state_dict()) == entries
    name = {(3, 4, 14, 3): "50", (2, 2, 2, 2): "18", (3, 4, 6, 3): "34", (3, 13, 30, 3): "100"}[layers]
    assert mine.config.name == ("ir-se" if se else "ir") + name
    if not se:  # each IR is 5,248 short of its IResNet: stage 1's downsample (4,096 + 128) and features (1,024)
        assert count_parameters(IResNet.on_meta(BackboneConfig(layers))) - count == 5_248


def test_ir50_converts_to_arcface_torchs_iresnet50_names_and_shapes():
    with torch.device("meta"):
        ir = RefIR().state_dict()
    state = convert_ir_state_dict({"model." + k: v for k, v in ir.items()} | {"head.kernel": torch.empty(512, 10, device="meta")})
    assert [[k, list(v.shape)] for k, v in state.items()] == REFERENCE["r50"]
    assert list(convert_ir_state_dict(ir, layout="ir")) == list(IResNet.on_meta(BackboneConfig(layout="ir")).state_dict())


def relative(a, b) -> float:
    """|a - b| / |b| over the whole batch (FR-EVAL.md reports the conversion's error this way)."""
    return float((a - b).norm() / b.norm())


TINY_IR = dict(units=(2, 1, 2, 1), widths=(16, 32, 48, 64), input_size=32, features=24)


@pytest.mark.parametrize("se", [False, True])
def test_conversion_is_exact_on_random_weights(se):
    ref = randomised(RefIR(**TINY_IR, se=se), seed=int(se))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, want_bgr = ref(x), ref(x.flip(1))
        for layout in ("iresnet", "ir"):
            model = backbone_from_state_dict(convert_ir_state_dict(ref.state_dict(), layout=layout))
            assert model.config.layout == layout and model.config.se_residual == se and model.config.layers == (2, 1, 2, 1)
            assert relative(model(x), want) < 1e-6
            # the BGR fold: the converted model fed RGB equals the original fed the channels reversed (the sums
            # run in another order, so float rounding differs a little more)
            rgb = backbone_from_state_dict(convert_ir_state_dict(ref.state_dict(), layout=layout, bgr_to_rgb=True))
            assert relative(rgb(x), want_bgr) < 2e-6
        assert model(x).abs().mean() > 0.1  # not a degenerate comparison
        # and back: an IR-layout model (what adaface-ir50 trains) loads into the IR net strictly
        back = RefIR(**TINY_IR, se=se).eval()
        back.load_state_dict(iresnet_to_ir(model.state_dict()), strict=True)
        assert relative(back(x), want) < 1e-6


def test_ir_naming_and_other_nets_are_refused_with_a_paragraph():
    ir = RefIR(**TINY_IR).state_dict()
    with pytest.raises(FileFormatError, match="convert_ir_state_dict"):
        config_from_state_dict(ir, source="adaface.ckpt")
    with pytest.raises(FileFormatError, match="not an IR / IR-SE net"):
        convert_ir_state_dict(tiny().state_dict())
    broken = dict(ir)
    broken["body.1.res_layer.7.weight"] = torch.zeros(3)
    with pytest.raises(FileFormatError, match="body.1.res_layer.7.weight"):
        convert_ir_state_dict(broken)
    with pytest.raises(InvalidInputError, match="layout='ir'"):
        iresnet_to_ir(tiny().state_dict())


def test_ir_layout_features_have_no_affine_and_init_is_kaiming():
    model = iresnet("r18", widths=(16, 32, 48, 64), num_features=24, input_size=32, layout="ir")
    assert model.features.weight is None and model.features.bias is None
    assert model.layer1[0].downsample is not None and not list(model.layer1[0].downsample.parameters())
    w = model.layer3[0].conv2.weight  # fan-out 48 * 9: std sqrt(2 / 432)
    assert w.std().item() == pytest.approx((2 / (48 * 9)) ** 0.5, rel=0.1)
    assert torch.equal(model.fc.bias, torch.zeros(24))
