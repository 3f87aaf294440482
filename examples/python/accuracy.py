"""Accuracy of a model over a folder of images, privately: one sub-folder per class (sorted
names are the class indices), PNG or JPEG files, resized to the model's input.

    python examples/python/accuracy.py model.onnx images/ --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 [--privacy split-model]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import vericonv


def floats(s):
    return [float(v) for v in s.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--mean", type=floats)
    ap.add_argument("--std", type=floats)
    ap.add_argument("--privacy", default="pad")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    model = vericonv.load(args.model, mean=args.mean, std=args.std)
    c, h, w = model.input_shape
    classes = sorted(p.name for p in Path(args.folder).iterdir() if p.is_dir())
    files = [(f, i) for i, name in enumerate(classes) for f in sorted((Path(args.folder) / name).iterdir())]
    pm = model.private(privacy=args.privacy)
    correct = agree = 0
    for start in range(0, len(files), args.batch):
        chunk = files[start : start + args.batch]
        x = np.stack([
            np.asarray(Image.open(f).convert("L" if c == 1 else "RGB").resize((w, h)), np.float32).reshape(h, w, c).transpose(2, 0, 1) / 255.0
            for f, _ in chunk
        ])
        logits = pm(x)
        agree += int(np.array_equal(logits, pm.quantized(x))) * len(chunk)
        correct += int((logits.argmax(1) == np.array([i for _, i in chunk])).sum())
    print(f"{model.name}: {correct}/{len(files)} correct ({correct / max(len(files), 1):.2%}), privacy {args.privacy}; "
          f"private logits equal the quantized model's for {agree}/{len(files)} images")


if __name__ == "__main__":
    main()
