#!/usr/bin/python3
"""Exports the models of the coverage table to ONNX, offline, with Debian's python3-torch and
python3-torchvision (no network: random weights, seeded).

    /usr/bin/python3 scripts/export-zoo.py [--large] [OUT_DIR]     (default: data/zoo)

Small models, defined here (always):
  lenet_avgpool   LeNet with AvgPool2d (torch puts a Pad before each pooling)      1×28×28
  silu_se         SiLU, squeeze-excitation (Mul), depthwise conv, hard-swish        3×32×32
  conv1d          a 1-D CNN over a signal: Conv1d, BatchNorm1d, pooling, Linear     1×128
  cnn_lstm        convolutions, then an LSTM over the columns, then Linear          1×32×64
  dynamic_hw      a CNN exported with dynamic height and width (run at 3×40×48)     3×H×W
  transposed      ConvTranspose2d (stride, padding, output padding, groups)         3×12×12
  transposed1d    ConvTranspose1d with dilation                                     2×40
With --large, torchvision's classification models at 3×224×224 too: resnet18, resnet50, vgg16,
alexnet, squeezenet1_1, googlenet, densenet121, mobilenet_v2, mobilenet_v3_small,
shufflenet_v2_x0_5, efficientnet_b0, mnasnet0_5, regnet_x_400mf.

Each NAME.onnx is exported as torch.onnx.export does by default, plus a dynamic batch axis;
beside it NAME.input.f32 (two seeded inputs in [0, 1]), NAME.logits.f32 (torch's outputs for
them, raw little-endian f32) and NAME.json (the input shape of one image).
"""

import os
import sys

import torch

from torch_export import export, randomize_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LeNetAvgPool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
            torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        )
        self.c = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84),
            torch.nn.ReLU(), torch.nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.c(self.f(x))


class SqueezeExcite(torch.nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.down = torch.nn.Conv2d(c, r, 1)
        self.up = torch.nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.up(torch.nn.functional.silu(self.down(self.pool(x)))))
        return x * s


class SiluSe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.SiLU())
        self.se = SqueezeExcite(16, 4)
        self.dw = torch.nn.Sequential(
            torch.nn.Conv2d(16, 16, 3, padding=(1, 2), dilation=(1, 2), groups=16), torch.nn.BatchNorm2d(16), torch.nn.Hardswish(),
            torch.nn.Conv2d(16, 24, 1),
        )
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 10))

    def forward(self, x):
        return self.head(self.dw(self.se(self.stem(x))))


class Conv1dNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv1d(1, 8, 7, padding=3), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
            torch.nn.Conv1d(8, 16, 5, stride=2, dilation=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
            torch.nn.Flatten(), torch.nn.Linear(16, 5),
        )

    def forward(self, x):
        return self.f(x)


class CnnLstm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                     torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.lstm = torch.nn.LSTM(8 * 16, 32, batch_first=True)
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = self.f(x)                                   # N × 8 × 16 × 32
        y = y.permute(0, 3, 1, 2).reshape(y.shape[0], 32, 8 * 16)
        seq, _ = self.lstm(y)
        return self.out(seq[:, -1])


class DynamicHw(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
        )

    def forward(self, x):
        return self.f(x)


class Transposed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
        )

    def forward(self, x):
        return self.f(x)


class Transposed1d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.ConvTranspose1d(2, 6, 4, stride=3, padding=2, dilation=2), torch.nn.ReLU(),
            torch.nn.Conv1d(6, 6, 3), torch.nn.AdaptiveMaxPool1d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4),
        )

    def forward(self, x):
        return self.f(x)


LARGE = ["resnet18", "resnet50", "vgg16", "alexnet", "squeezenet1_1", "googlenet", "densenet121", "mobilenet_v2",
         "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0", "mnasnet0_5", "regnet_x_400mf"]


def main():
    args = [a for a in sys.argv[1:] if a != "--large"]
    out = args[0] if args else os.path.join(ROOT, "data", "zoo")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name, model, shape, dyn in [
        ("lenet_avgpool", LeNetAvgPool(), (1, 28, 28), False),
        ("silu_se", SiluSe(), (3, 32, 32), False),
        ("conv1d", Conv1dNet(), (1, 128), False),
        ("cnn_lstm", CnnLstm(), (1, 32, 64), False),
        ("dynamic_hw", DynamicHw(), (3, 40, 48), True),
        ("transposed", Transposed(), (3, 12, 12), False),
        ("transposed1d", Transposed1d(), (2, 40), False),
    ]:
        randomize_batchnorm(model)
        export(model, shape, os.path.join(out, f"{name}.onnx"), dynamic_hw=dyn)
    if "--large" in sys.argv:
        import torchvision

        for name in LARGE:
            model = getattr(torchvision.models, name)()
            randomize_batchnorm(model)
            export(model, (3, 224, 224), os.path.join(out, f"{name}.onnx"))


if __name__ == "__main__":
    main()
