"""A randomly initialised IResNet-style recogniser exported to ONNX at test time (the tests' stand-in for
insightface's and Arc2Face's arcface.onnx: same input name, layout and normalisation)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

EMB = 64


class Block(nn.Module):
    """IResNet's improved residual block: BN-Conv-BN-PReLU-Conv-BN plus a (strided) shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.short(x)


class TinyIResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8))
        self.blocks = nn.Sequential(Block(8, 16, 2), Block(16, 16, 2), Block(16, 24, 2), Block(24, 24, 2))
        self.bn2 = nn.BatchNorm2d(24)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(24 * 7 * 7, EMB)
        self.features = nn.BatchNorm1d(EMB)

    def forward(self, x):
        x = self.bn2(self.blocks(self.stem(x)))
        return self.features(self.fc(torch.flatten(self.dropout(x), 1)))


@functools.cache
def random_recogniser_bytes() -> bytes:
    import io

    torch.manual_seed(0)
    model = TinyIResNet()
    with torch.no_grad():  # non-trivial BN statistics so folding mistakes show up
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    model.eval()
    buf = io.BytesIO()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(
        model, torch.randn(2, 3, 112, 112), buf, input_names=["input.1"], output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=13, dynamo=False,
    )
    return buf.getvalue()
