"""IResNet backbones with insightface `arcface_torch`'s state-dict names, so checkpoints load both ways.

Architecture (arcface_torch semantics, written from its description): a stride-1 3x3 stem (conv,
BN, PReLU), four stages of pre-activation basic blocks (BN, conv3x3, BN, PReLU, conv3x3 with the
stage's stride 2, BN, plus the shortcut; no activation after the add), then BN2d, flatten, dropout,
Linear(C * s * s, 512) and a BatchNorm1d named `features` whose weight is fixed at 1. At 112x112
input the last map is 7x7, so `fc` takes 25088 inputs. `se=True` adds the squeeze-excitation gate
of the Vec2Face/HSFace training code (reduction 16, bias-free 1x1 convs `attn.fc1`/`attn.fc2`) on
the shortcut of each stage's first block only.

AdaFace's and TFace's IR / IR-SE nets (FR-EVAL.md section 5) are two options on the same module,
keeping these key names: `layout="ir"` makes a block whose width does not change shortcut through a
strided identity (MaxPool2d(1, stride): no `layer1.0.downsample` weights), gives `features` no
affine weight or bias (BatchNorm1d(affine=False)) and initialises as they do (Kaiming-normal,
fan-out); `se_residual=True` puts their SE gate (`se_block.fc1`/`fc2`) in every block's residual
branch, after its last BN. synthface.fr.irse converts their checkpoints' names into these, exactly.

    model = iresnet("r50")                       # 43,590,848 parameters, arcface_torch's iresnet50
    model = iresnet("r50", se=True, dropout=0.4) # HSFace10K's IR-SE50, 43,634,368 parameters
    model = iresnet("r50", layout="ir")          # AdaFace's IR-50, 43,585,600 parameters (467 entries)
    model = iresnet("r50", layout="ir", se_residual=True)  # AdaFace/TFace IR-SE-50, 43,808,320 (515)
    model = backbone_from_state_dict(torch.load("model.pt"))  # architecture read from the keys
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from synthface.errors import FileFormatError, InvalidInputError

#: Blocks per stage of each named depth, as in arcface_torch.
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
SE_REDUCTION = 16
BN_EPS = 1e-5
LAYOUTS = ("iresnet", "ir")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that fixes an IResNet's shapes (dropout does not, but travels with the config).

    `input_size` must be a multiple of 16 (four stride-2 stages); `fc` takes widths[-1] * (input_size / 16)^2.
    `se`: HSFace's gate on each stage's first shortcut; `layout`/`se_residual`: AdaFace's IR / IR-SE (module docstring).
    """

    layers: tuple[int, ...] = DEPTHS["r50"]
    widths: tuple[int, ...] = WIDTHS
    num_features: int = 512
    input_size: int = 112
    se: bool = False
    dropout: float = 0.0
    stem_width: int = 64
    layout: Literal["iresnet", "ir"] = "iresnet"
    se_residual: bool = False

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or len(self.widths) != 4 or min(self.layers) < 1 or min(self.widths) < 1:
            raise InvalidInputError(
                f"An IResNet has four stages of at least one block each; got layers {self.layers} and widths "
                f"{self.widths}. Use a named depth ({', '.join(DEPTHS)}) or four positive numbers for each."
            )
        if self.input_size < 16 or self.input_size % 16:
            raise InvalidInputError(
                f"input_size {self.input_size} is not a positive multiple of 16; four stride-2 stages need one "
                "(112 for aligned faces)."
            )
        if self.layout not in LAYOUTS:
            raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}.")
        if (self.se or self.se_residual) and min(self.widths) < SE_REDUCTION:
            raise InvalidInputError(f"The SE variant needs stage widths of at least {SE_REDUCTION}; got {self.widths}.")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}.")

    @property
    def name(self) -> str:
        """`r50`, `r50-se` (HSFace), `ir50`, `ir-se50` (AdaFace's IR-SE), ... for the standard shapes;
        `custom` otherwise (a residual SE on the IResNet layout adds `-rse`)."""
        depth = next((k for k, v in DEPTHS.items() if v == tuple(self.layers)), None)
        standard = tuple(self.widths) == WIDTHS and self.stem_width == 64
        if not (depth and standard):
            return "custom"
        if self.layout == "ir":
            base = f"ir-se{depth[1:]}" if self.se_residual else f"ir{depth[1:]}"
            return base + ("-se" if self.se else "")
        return depth + ("-se" if self.se else "") + ("-rse" if self.se_residual else "")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean over space of x)))), with bias-free 1x1 convolutions."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (-> residual SE), plus the (downsampled,
    gated) input. `ir`: a width-keeping strided block shortcuts through MaxPool2d(1, stride), as IR does."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, se: bool = False, se_residual: bool = False,
                 ir: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.se_block = SqueezeExcite(out_ch) if se_residual else None
        self.downsample: nn.Module | None = None
        if ir and in_ch == out_ch and stride != 1:
            self.downsample = nn.MaxPool2d(1, stride)
        elif stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch, eps=BN_EPS))
        self.attn = SqueezeExcite(out_ch) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se_block is not None:
            out = self.se_block(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.attn is not None:
            shortcut = self.attn(shortcut)
        return out + shortcut


class IResNet(nn.Module):
    """(N, 3, S, S) images normalised to [-1, 1] -> (N, num_features) un-normalised embeddings.

    The head (`fc`, `features`) always runs in float32, also under autocast, as arcface_torch's fp16
    mode does. Convolutions start N(0, 0.1), BatchNorms at weight 1 / bias 0; `features.weight` is 1
    and never trained (requires_grad False), which the optimiser must respect. The IR layout has no
    `features` weight or bias and starts Kaiming-normal (fan-out) in every conv and in `fc` (bias 0).
    """

    def __init__(self, config: BackboneConfig | None = None):
        super().__init__()
        self.config = cfg = config or BackboneConfig()
        self.conv1 = nn.Conv2d(3, cfg.stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width, eps=BN_EPS)
        self.prelu = nn.PReLU(cfg.stem_width)
        in_ch, ir = cfg.stem_width, cfg.layout == "ir"
        for stage, (blocks, width) in enumerate(zip(cfg.layers, cfg.widths, strict=True), 1):
            first = IBasicBlock(in_ch, width, 2, se=cfg.se, se_residual=cfg.se_residual, ir=ir)
            rest = (IBasicBlock(width, width, se_residual=cfg.se_residual) for _ in range(blocks - 1))
            self.add_module(f"layer{stage}", nn.Sequential(first, *rest))
            in_ch = width
        self.bn2 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(in_ch * (cfg.input_size // 16) ** 2, cfg.num_features)
        self.features = nn.BatchNorm1d(cfg.num_features, eps=BN_EPS, affine=not ir)
        self.reset_parameters()

    @classmethod
    def on_meta(cls, config: BackboneConfig) -> IResNet:
        """The same module on the meta device: names, shapes and parameter counts without memory."""
        with torch.device("meta"):
            return cls(config)

    def reset_parameters(self) -> None:
        ir = self.config.layout == "ir"
        for module in self.modules():
            if isinstance(module, nn.Conv2d) or (ir and isinstance(module, nn.Linear)):
                if ir:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(module.weight, 0.0, 0.1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.features.weight is not None:
            self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        with torch.autocast(x.device.type, enabled=False):
            return self.features(self.fc(x.float()))


def iresnet(
    depth: str = "r50", *, se: bool = False, dropout: float = 0.0, num_features: int = 512, input_size: int = 112,
    widths: Sequence[int] = WIDTHS, layout: Literal["iresnet", "ir"] = "iresnet", se_residual: bool = False,
) -> IResNet:
    """A named depth (r18, r34, r50, r100, r200). `widths` other than (64, 128, 256, 512) make a
    narrower test model with the same key names (its stem stays as wide as its first stage).
    `layout="ir"` (+ `se_residual=True`): AdaFace's IR (IR-SE) net under these names."""
    if depth not in DEPTHS:
        raise InvalidInputError(f"Unknown IResNet depth {depth!r}; choose one of {', '.join(DEPTHS)}.")
    widths = tuple(int(w) for w in widths)
    return IResNet(BackboneConfig(DEPTHS[depth], widths, num_features, input_size, se, dropout, stem_width=widths[0],
                                  layout=layout, se_residual=se_residual))


_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def config_from_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "the state dict") -> BackboneConfig:
    """The BackboneConfig whose IResNet has exactly these keys and shapes (dropout 0).

    Raises FileFormatError when `state` is not an IResNet in arcface_torch's naming (a whole
    training checkpoint, another architecture, a DataParallel `module.` prefix).
    """
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        raise FileFormatError(
            f"{source} has every key prefixed 'module.' (saved from DataParallel/DDP). Save "
            "`model.module.state_dict()` instead, or strip the prefix before loading."
        )
    needed = ("conv1.weight", "fc.weight", "features.running_mean", "layer1.0.conv1.weight", "layer4.0.conv2.weight")
    if "input_layer.0.weight" in state or "model.input_layer.0.weight" in state:
        raise FileFormatError(
            f"{source} is an IR / IR-SE net in AdaFace's or TFace's naming (input_layer, body, output_layer). Convert "
            "it once with synthface.fr.irse.convert_ir_state_dict(state, bgr_to_rgb=True) (AdaFace's models take BGR "
            "input; the fold makes them take RGB as synthface feeds) and save the result as the model.pt to load."
        )
    if not all(k in state for k in needed):
        sample = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        raise FileFormatError(
            f"{source} is not an IResNet backbone in arcface_torch's naming (keys: {sample or 'none'}); it needs "
            f"{', '.join(needed)}. Pass a backbone state dict (model.pt of a `synthface train` run, or an "
            "arcface_torch iresnet checkpoint), or an ONNX recogniser."
        )
    blocks = [0, 0, 0, 0]
    for k in keys:
        m = _BLOCK_KEY.match(k)
        if m:
            stage = int(m.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(m.group(2)) + 1)
    widths = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    stem = int(state["conv1.weight"].shape[0])
    fc_out, fc_in = (int(d) for d in state["fc.weight"].shape)
    side = round((fc_in / widths[-1]) ** 0.5)
    if side * side * widths[-1] != fc_in:
        raise FileFormatError(f"{source}: fc takes {fc_in} inputs, not {widths[-1]} x a square map; not an IResNet.")
    config = BackboneConfig(tuple(blocks), widths, fc_out, side * 16, "layer1.0.attn.fc1.weight" in state, 0.0, stem,
                            layout="iresnet" if "features.weight" in state else "ir",
                            se_residual="layer1.0.se_block.fc1.weight" in state)
    from synthface.weights import state_dict_mismatch

    detail = state_dict_mismatch({k: tuple(v.shape) for k, v in IResNet.on_meta(config).state_dict().items()}, state)
    if detail:
        raise FileFormatError(
            f"{source} looks like an IResNet but does not match one ({detail}). It may be another "
            "architecture with similar names; pass an arcface_torch IResNet state dict or an ONNX recogniser."
        )
    return config


def backbone_from_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "the state dict") -> IResNet:
    """Build the IResNet the keys describe and load `state` into it (strict), in eval mode."""
    model = IResNet(config_from_state_dict(state, source=source))
    model.load_state_dict(state, strict=True)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """All parameters, frozen ones included (arcface_torch's published counts include `features.weight`)."""
    return sum(p.numel() for p in model.parameters())
