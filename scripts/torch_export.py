"""The export both scripts/export-torchvision.py and scripts/export-zoo.py use: a model to ONNX as
torch.onnx.export does by default (plus a dynamic batch axis), and beside it two seeded inputs
and torch's own outputs, so that a test can check a loader against torch itself."""

import inspect
import json
import os

import torch


def export(model, shape, path, opset=None, dynamic_hw=False):
    """Exports `model` for one image of `shape` to `path` (NAME.onnx), and writes beside it
    NAME.input.f32 (two seeded random inputs in [0, 1]), NAME.logits.f32 (torch's outputs for
    them; raw little-endian f32) and NAME.json (the image shape)."""
    model.eval()
    # The TorchScript exporter, as torch 1.13 has it; newer torch defaults to the dynamo one.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    if opset is not None:
        legacy["opset_version"] = opset
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if dynamic_hw:
        axes["input"].update({2: "height", 3: "width"})
    torch.onnx.export(model, torch.zeros(1, *shape), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes=axes, **legacy)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    stem = path[: -len(".onnx")]
    x.numpy().astype("<f4").tofile(stem + ".input.f32")
    logits.numpy().astype("<f4").tofile(stem + ".logits.f32")
    with open(stem + ".json", "w") as f:
        json.dump({"input": list(shape), "dynamic_hw": dynamic_hw}, f)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) and torch's outputs for 2 inputs")


def randomize_batchnorm(model):
    """Random BatchNorm statistics, so that what a loader folds is exercised."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
