"""Writes models/demo/: the first 16 MNIST test images and labels as IDX files, embedded in the
vericonv binary for `vericonv demo`. Run scripts/fetch-data.sh first."""
import os
import struct

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = os.path.join(root, "data", "mnist")
out = os.path.join(root, "models", "demo")
os.makedirs(out, exist_ok=True)
images = open(os.path.join(src, "t10k-images-idx3-ubyte"), "rb").read()
labels = open(os.path.join(src, "t10k-labels-idx1-ubyte"), "rb").read()
with open(os.path.join(out, "mnist-t10k-16-images.idx"), "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 16, 28, 28) + images[16 : 16 + 16 * 784])
with open(os.path.join(out, "mnist-t10k-16-labels.idx"), "wb") as f:
    f.write(struct.pack(">II", 0x801, 16) + labels[8 : 8 + 16])
