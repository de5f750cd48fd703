"""6DRepNet, the head-pose judge of Vec2Face's AttrOP: RepVGG-B1g2 in deploy form -> 6D -> rotation -> Euler.

The published `6DRepNet_300W_LP_AFLW2000.pth` (registry entry `vec2face-6drepnet`) is a bare state
dict of 58 tensors, 39,323,398 fp32 parameters: `layer0` and `layer1.0` ... `layer4.0`, each one
RepVGG block re-parameterised to a single 3x3 convolution with bias (`rbr_reparam`) + ReLU, then a
global average pool and `linear_reg` Linear(2048, 6). RepVGG-B1g2: blocks per stage (4, 6, 16, 1),
widths 64 * (2, 2, 2, 4) (the stem keeps min(64, 128) = 64), stride 2 on the stem and on the first
block of every stage, and groups=2 on the blocks numbered 2, 4, ..., 26 (the stem is number 0).
`SixDRepNet` names its modules exactly so, so loading is the identity map with `strict=True`.

The six outputs are the first two columns of a rotation matrix (unnormalised); Gram-Schmidt gives
R = [x | y | z]; Euler angles follow 6DRepNet: pitch = atan2(R21, R22), yaw = atan2(-R20, sy),
roll = atan2(R10, R00) with sy = sqrt(R00^2 + R10^2) (R = Rz(roll) Ry(yaw) Rx(pitch); in scipy's
terms `Rotation.from_euler("xyz", [pitch, yaw, roll])`), in degrees. Yaw lies in [-90, 90].

Input, as Vec2Face's AttrOP feeds it (`preprocess="vec2face"`, the default): the generator's
112x112 RGB image in [-1, 1], channels reversed to BGR, mapped to [0, 1], no resize, no mean/std.
6DRepNet itself was trained on RGB crops resized to 224 with ImageNet mean/std; that is
`preprocess="6drepnet"`. Sources: thohemp/6DRepNet (sixdrepnet/backbone/repvgg.py, model.py,
utils.py, regressor.py, datasets.py) and HaiyuWu/Vec2Face (`gen_image`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.weights import state_dict_mismatch

#: RepVGG-B1g2: blocks per stage, stage widths (64 * (2, 2, 2, 4)), stem width min(64, 64 * 2).
REPVGG_B1_BLOCKS = (4, 6, 16, 1)
REPVGG_B1_WIDTHS = (128, 256, 512, 2048)
REPVGG_STEM_WIDTH = 64
#: Blocks (numbered from 1 after the stem) whose 3x3 convolution has groups=2 (RepVGG's g2 map).
REPVGG_G2_LAYERS = frozenset(range(2, 27, 2))
PREPROCESSING = ("vec2face", "6drepnet")
#: 6DRepNet's own input statistics (ImageNet, RGB), used only with preprocess="6drepnet".
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Below this, sy = cos(yaw) counts as zero (gimbal lock): roll is set to 0 and pitch read from R12, R11.
SINGULAR_EPS = 1e-6


class RepVGGDeployBlock(nn.Module):
    """One RepVGG block in deploy form: a 3x3 convolution with bias (`rbr_reparam`), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.rbr_reparam(x))


class SixDRepNet(nn.Module):
    """6DRepNet with a RepVGG-B1g2 deploy backbone; state-dict keys equal the published file's.

    `forward` gives (B, 3, 3) rotation matrices from preprocessed images, `pose` (B, 3) pitch, yaw,
    roll in degrees from generator images, `yaw` (B,) yaw in degrees (AttrOP's yaw estimator).
    Every step is differentiable, so AttrOP's pose loss reaches the generator's input.
    """

    def __init__(self, preprocess: str = "vec2face") -> None:
        super().__init__()
        if preprocess not in PREPROCESSING:
            raise InvalidInputError(f"preprocess must be one of {', '.join(PREPROCESSING)}, got {preprocess!r}.")
        self.preprocess = preprocess
        self.layer0 = RepVGGDeployBlock(3, REPVGG_STEM_WIDTH, stride=2, groups=1)
        channels, number = REPVGG_STEM_WIDTH, 1
        for stage, (blocks, width) in enumerate(zip(REPVGG_B1_BLOCKS, REPVGG_B1_WIDTHS), start=1):
            layers = []
            for i in range(blocks):
                groups = 2 if number in REPVGG_G2_LAYERS else 1
                layers.append(RepVGGDeployBlock(channels, width, stride=2 if i == 0 else 1, groups=groups))
                channels, number = width, number + 1
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear_reg = nn.Linear(channels, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) network input -> (B, 3, 3) rotation matrices."""
        for layer in (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return rotation_from_6d(self.linear_reg(x.mean(dim=(2, 3))))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Generator images (B, 3, 112, 112) RGB in [-1, 1] -> this model's input (see `preprocess`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"6DRepNet takes (B, 3, H, W) RGB images, got shape {tuple(images.shape)}.")
        x = images.to(self.linear_reg.weight.dtype)
        if self.preprocess == "vec2face":
            return (x.flip(1) + 1) / 2
        x = nn.functional.interpolate((x + 1) / 2, size=(224, 224), mode="bilinear", align_corners=False)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (x - mean) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def pose(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3) pitch, yaw, roll in degrees of generator images (RGB in [-1, 1])."""
        return euler_from_rotation(self(self.prepare(images)))

    def yaw(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) yaw in degrees, in [-90, 90]: AttrOP's yaw estimator (`AttrOPEstimators.yaw`)."""
        return self.pose(images)[:, 1]


def rotation_from_6d(six: torch.Tensor) -> torch.Tensor:
    """(B, 6) -> (B, 3, 3): columns x = a / |a|, z = (x cross b) / |.|, y = z cross x, where a, b are
    the first and last three values (the first two columns of the rotation, up to scale and skew)."""
    x = six[:, :3] / six[:, :3].norm(dim=1, keepdim=True).clamp_min(1e-8)
    z = torch.linalg.cross(x, six[:, 3:])
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-8)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=2)


def euler_from_rotation(r: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations -> (B, 3) pitch, yaw, roll in degrees (R = Rz(roll) Ry(yaw) Rx(pitch)).

    At gimbal lock (sy < SINGULAR_EPS) roll is 0 and pitch = atan2(-R12, R11), as 6DRepNet does."""
    sy = torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    singular = sy < SINGULAR_EPS
    pitch = torch.where(singular, torch.atan2(-r[:, 1, 2], r[:, 1, 1]), torch.atan2(r[:, 2, 1], r[:, 2, 2]))
    yaw = torch.atan2(-r[:, 2, 0], sy)
    roll = torch.where(singular, torch.zeros_like(sy), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    return torch.stack([pitch, yaw, roll], dim=1) * (180 / math.pi)


def read_sixdrepnet_state(path: str | Path, *, allow_pickle: bool | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a published-style `.pth`: a bare state dict (the published file) or one
    wrapped as {'model_state_dict': ...} (6DRepNet's training checkpoints). Read with torch's
    weights_only loader, and only on a pickle opt-in (`synthface.weights.pickle_allowed`).

    Raises:
        ModelNotFoundError: no opt-in to pickled weights (the message says how to give one).
        FileFormatError: the file is not a readable torch checkpoint holding a state dict.
    """
    from synthface.weights import read_pickled_state_dict

    return read_pickled_state_dict(path, model="vec2face-6drepnet", what="6DRepNet pose estimator",
                                   allow_pickle=allow_pickle, unwrap=("model_state_dict",))


def sixdrepnet_from_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "the state dict",
                               preprocess: str = "vec2face") -> SixDRepNet:
    """A frozen `SixDRepNet` in eval mode with `state` loaded strictly (names and shapes must be
    exactly the published deploy form's).

    Raises:
        FileFormatError: keys are missing, unexpected or of another shape; the message names them
            (a training-form RepVGG, with `rbr_dense`/`rbr_1x1` branches, must be converted first).
    """
    with torch.device("meta"):
        model = SixDRepNet(preprocess)
    detail = state_dict_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    if detail:
        raise FileFormatError(
            f"{source} is not 6DRepNet's RepVGG-B1g2 in deploy form ({detail}). Pass the published "
            "6DRepNet_300W_LP_AFLW2000.pth (`synthface models download vec2face-6drepnet`); a training-form "
            "checkpoint (rbr_dense / rbr_1x1 branches) must first be converted with RepVGG's switch_to_deploy."
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval().requires_grad_(False)


def load_sixdrepnet(path: str | Path | None = None, *, allow_pickle: bool | None = None, device="cpu",
                    dtype: torch.dtype = torch.float32, preprocess: str = "vec2face") -> SixDRepNet:
    """6DRepNet from `path` (a `.pth` file or a folder in the Hugging Face layout of BooBooWu/Vec2Face),
    or, with no path, the registry's `vec2face-6drepnet` found locally; frozen, eval mode, on `device`.

    Licence: `synthface.weights.licence("vec2face-6drepnet")` (non-commercial research only).

    Raises:
        ModelNotFoundError: not installed (names the download command) or pickled without an opt-in.
        FileFormatError: unreadable, or not the published architecture (names the keys).
    """
    from synthface import weights

    if path is None:
        file = weights.find("vec2face-6drepnet")
    else:
        file = weights.find("vec2face-6drepnet", path=path) if Path(path).expanduser().is_dir() else Path(path).expanduser()
        if not file.is_file():
            raise ModelNotFoundError(
                f"The 6DRepNet file {file} does not exist. Fetch it with `synthface models download vec2face-6drepnet`, "
                "or pass the path of 6DRepNet_300W_LP_AFLW2000.pth."
            )
    state = read_sixdrepnet_state(file, allow_pickle=allow_pickle)
    return sixdrepnet_from_state_dict(state, source=str(file), preprocess=preprocess).to(device, dtype)
