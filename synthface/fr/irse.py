"""AdaFace / TFace IR and IR-SE checkpoints <-> synthface's IResNet names, exactly (FR-EVAL.md section 5).

AdaFace (mk-minchul/AdaFace net.py) and TFace (torchkit/backbone/model_irse.py) name their IR nets
`input_layer.{0 conv, 1 BN, 2 PReLU}`, `body.{i}.res_layer.{0 BN, 1 conv3x3, 2 BN, 3 PReLU, 4 conv3x3
stride, 5 BN}` (+ `res_layer.se_block.fc1/fc2` in IR-SE), `body.{i}.shortcut_layer.{0 conv1x1, 1 BN}`
where the width changes (a MaxPool2d(1, 2) strided identity where it does not: stage 1's first block)
and `output_layer.{0 BN2d, 3 Linear, 4 BatchNorm1d(affine=False)}`, blocks numbered through all
stages. The map into synthface's names: body index -> layer{stage}.{block} (a stage starts where the
width changes, stage 1 at body.0), res_layer 0..5 -> bn1, conv1, bn2, prelu, conv2, bn3, se_block ->
se_block, shortcut_layer -> downsample; input_layer -> conv1, bn1, prelu; output_layer 0, 3, 4 ->
bn2, fc, features.

Two targets:
- layout "ir" (`iresnet(depth, layout="ir", se_residual=...)`): the same net under synthface's names;
  a pure rename.
- layout "iresnet" (arcface_torch's iresnet, loadable with strict=True there too): stage 1's strided
  identity becomes a 1x1 identity conv + a neutral BN (running mean 0, var 1, weight sqrt(1 + eps),
  bias 0: the identity in eval mode, not under training-mode batch statistics), and `features` gets
  weight 1, bias 0. Raw outputs agree to float rounding.

`bgr_to_rgb=True` reverses conv1's input channels, turning a model trained on BGR input (AdaFace's
released models: its inference.py feeds BGR) into one that takes RGB, as synthface feeds.

    ckpt = torch.load("adaface_ir50_ms1mv2.ckpt", weights_only=False)  # Lightning: only for a trusted file
    state = convert_ir_state_dict(ckpt["state_dict"], bgr_to_rgb=True)  # drops head.*, strips model.
    torch.save(state, "model.pt")                                        # synthface eval model.pt ...

Networks of 18, 34, 50 and 100 layers (BasicBlockIR) convert; the bottleneck IR-152/200 have no
IResNet counterpart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.backbones import BN_EPS, LAYOUTS, BackboneConfig, IResNet

__all__ = ["convert_ir_state_dict", "ir_config", "iresnet_to_ir"]

_RES = {"0": "bn1", "1": "conv1", "2": "bn2", "3": "prelu", "4": "conv2", "5": "bn3", "se_block": "se_block"}
_STEM = {"0": "conv1", "1": "bn1", "2": "prelu"}
_OUT = {"0": "bn2", "3": "fc", "4": "features"}
_BODY = re.compile(r"^body\.(\d+)\.(res_layer|shortcut_layer)\.([^.]+)\.(.+)$")
_EDGE = re.compile(r"^(input_layer|output_layer)\.(\d+)\.(.+)$")


def _backbone_only(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The IR net's own entries: a Lightning checkpoint's `model.` prefix (and DataParallel's
    `module.`) stripped, its `head.` entries dropped."""
    out = dict(state)
    for prefix in ("model.", "module."):
        if out and any(k.startswith(prefix + "input_layer.") for k in out):
            out = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
    out = {k: v for k, v in out.items() if not k.startswith("head.")}
    if "input_layer.0.weight" not in out or "output_layer.3.weight" not in out:
        sample = ", ".join(list(state)[:4]) + (", ..." if len(state) > 4 else "")
        raise FileFormatError(
            f"{source} is not an IR / IR-SE net in AdaFace's or TFace's naming (keys: {sample or 'none'}); it needs "
            "input_layer.0.weight and output_layer.3.weight. Pass the backbone's state dict (a Lightning checkpoint's "
            "['state_dict'] is fine: its model. prefix and head. entries are handled)."
        )
    return out


def ir_config(state: Mapping[str, torch.Tensor], *, layout: str = "ir", source: str = "the state dict") -> BackboneConfig:
    """The BackboneConfig of the IResNet an IR / IR-SE state dict converts into (dropout 0)."""
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    state = _backbone_only(state, source)
    widths, blocks = _stages(state, source)
    stem = int(state["input_layer.0.weight"].shape[0])
    fc_out, fc_in = (int(d) for d in state["output_layer.3.weight"].shape)
    side = round((fc_in / widths[-1]) ** 0.5)
    if side * side * widths[-1] != fc_in:
        raise FileFormatError(f"{source}: output_layer.3 takes {fc_in} inputs, not {widths[-1]} x a square map.")
    return BackboneConfig(tuple(blocks), tuple(widths), fc_out, side * 16, False, 0.0, stem, layout=layout,
                          se_residual="body.0.res_layer.se_block.fc1.weight" in state)


def _stages(state: Mapping[str, torch.Tensor], source: str) -> tuple[list[int], list[int]]:
    """(widths, blocks per stage): a stage starts at body.0 and wherever the width changes."""
    indices = sorted({int(m.group(1)) for k in state if (m := _BODY.match(k))})
    if indices != list(range(len(indices))) or not indices:
        raise FileFormatError(f"{source}: the body blocks are not numbered 0..N-1 (found {indices[:8]}...).")
    widths, blocks = [], []
    for i in indices:
        conv = state.get(f"body.{i}.res_layer.1.weight")
        if conv is None or conv.dim() != 4 or tuple(conv.shape[2:]) != (3, 3) or f"body.{i}.res_layer.5.weight" not in state:
            raise FileFormatError(
                f"{source}: body.{i} is not an IR basic block (res_layer.1 a 3x3 conv through res_layer.5 a BN); the "
                "bottleneck IR-152/200 have no IResNet counterpart. Convert an IR / IR-SE of 18, 34, 50 or 100 layers."
            )
        width = int(conv.shape[0])
        if not widths or width != widths[-1]:
            widths.append(width)
            blocks.append(0)
        blocks[-1] += 1
    if len(widths) != 4:
        raise FileFormatError(f"{source}: the body's width changes give {len(widths)} stages ({widths}); an IR net has 4.")
    return widths, blocks


def convert_ir_state_dict(state: Mapping[str, torch.Tensor], *, layout: str = "iresnet", bgr_to_rgb: bool = False,
                          source: str = "the state dict") -> dict[str, torch.Tensor]:
    """An AdaFace / TFace IR or IR-SE state dict under synthface's IResNet names (module docstring):
    `layout` "iresnet" (arcface_torch's iresnet keys, + identity stage-1 downsample and features 1 / 0)
    or "ir" (a pure rename); checked key for key and shape for shape against the module it fits."""
    config = ir_config(state, layout=layout, source=source)
    state = _backbone_only(state, source)
    stage_of, first = {}, {}
    widths, blocks = _stages(state, source)
    i = 0
    for s, n in enumerate(blocks, 1):
        for b in range(n):
            stage_of[i] = f"layer{s}.{b}"
            first[i] = b == 0
            i += 1
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if m := _BODY.match(key):
            index, part, sub, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            name = _RES.get(sub) if part == "res_layer" else {"0": "downsample.0", "1": "downsample.1"}.get(sub)
            if name is None:
                unknown.append(key)
                continue
            out[f"{stage_of[index]}.{name}.{rest}"] = value
        elif (m := _EDGE.match(key)) and (name := (_STEM if m.group(1) == "input_layer" else _OUT).get(m.group(2))):
            out[f"{name}.{m.group(3)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise FileFormatError(
            f"{source} has entries no IR / IR-SE net has: {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}. "
            "Pass the backbone of an AdaFace or TFace IR / IR-SE model."
        )
    if layout == "iresnet":
        for index, prefix in stage_of.items():
            if first[index] and f"{prefix}.downsample.0.weight" not in out:
                _identity_downsample(out, prefix)
        ref = out["features.running_mean"]
        out["features.weight"] = torch.ones_like(ref)
        out["features.bias"] = torch.zeros_like(ref)
    if bgr_to_rgb:
        out["conv1.weight"] = out["conv1.weight"].flip(1).contiguous()
    from synthface.weights import state_dict_mismatch

    expected = IResNet.on_meta(config).state_dict()
    detail = state_dict_mismatch({k: tuple(v.shape) for k, v in expected.items()}, out)
    if detail:
        raise FileFormatError(f"{source} does not convert into the IResNet its shapes describe ({detail}); it is not "
                              "an IR / IR-SE net of AdaFace's or TFace's.")
    return {k: out[k] for k in expected}  # in the module's order


def _identity_downsample(out: dict[str, torch.Tensor], prefix: str) -> None:
    """A 1x1 identity conv and a BN that is the identity in eval mode, where IR shortcuts through MaxPool2d(1, 2)."""
    ref = out[f"{prefix}.bn3.weight"]
    c = ref.shape[0]
    out[f"{prefix}.downsample.0.weight"] = torch.eye(c, dtype=ref.dtype, device=ref.device).reshape(c, c, 1, 1)
    out[f"{prefix}.downsample.1.weight"] = torch.full_like(ref, (1.0 + BN_EPS) ** 0.5)
    out[f"{prefix}.downsample.1.bias"] = torch.zeros_like(ref)
    out[f"{prefix}.downsample.1.running_mean"] = torch.zeros_like(ref)
    out[f"{prefix}.downsample.1.running_var"] = torch.ones_like(ref)
    out[f"{prefix}.downsample.1.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=ref.device)


def iresnet_to_ir(state: Mapping[str, torch.Tensor], *, rgb_to_bgr: bool = False,
                  source: str = "the state dict") -> dict[str, torch.Tensor]:
    """The inverse rename for an IR-layout IResNet (what `synthface train --preset adaface-ir50` writes as
    model.pt): AdaFace / TFace key names, loadable by their IR / IR-SE nets with strict=True."""
    from synthface.fr.backbones import config_from_state_dict

    config = config_from_state_dict(state, source=source)
    if config.layout != "ir" or config.se:
        raise InvalidInputError(
            f"{source} is an IResNet with a learned stage-1 downsample and an affine features BN (arcface_torch's "
            "layout) or HSFace's shortcut SE gates, which AdaFace's IR has no place for; only an IR-layout model "
            "(layout='ir', se_residual for IR-SE) maps back exactly."
        )
    res = {v: k for k, v in _RES.items()}
    stem, tail = {v: k for k, v in _STEM.items()}, {v: k for k, v in _OUT.items()}
    index = {f"layer{s}.{b}": i for i, (s, b) in enumerate((s, b) for s, n in enumerate(config.layers, 1) for b in range(n))}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in stem:
            out[f"input_layer.{stem[head]}.{rest}"] = value
        elif head in tail:
            out[f"output_layer.{tail[head]}.{rest}"] = value
        else:
            block, _, rest = rest.partition(".")
            module, _, leaf = rest.partition(".")
            body = f"body.{index[f'{head}.{block}']}"
            if module == "downsample":
                sub, _, leaf = leaf.partition(".")
                out[f"{body}.shortcut_layer.{sub}.{leaf}"] = value
            else:
                out[f"{body}.res_layer.{res[module]}.{leaf}"] = value
    if rgb_to_bgr:
        out["input_layer.0.weight"] = out["input_layer.0.weight"].flip(1).contiguous()
    return out
