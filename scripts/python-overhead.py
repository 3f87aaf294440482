#!/usr/bin/env python3
"""The Python binding's overhead: the same private forward pass through the `vericonv` package
and through the Rust library (`crates/vericonv-model/examples/tract_private.rs`), on one thread,
same model, batch and mode, in one run. Prints both medians and their ratio.

    RAYON_NUM_THREADS=1 .venv-py/bin/python scripts/python-overhead.py data/torchvision/resnet18.onnx 16 5 pad
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import vericonv

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    path, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    privacy = sys.argv[4] if len(sys.argv) > 4 else "pad"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    rust = subprocess.run(
        ["cargo", "run", "--release", "--quiet", "-p", "vericonv-model", "--features", "tract",
         "--example", "tract_private", "--", path, str(batch), str(reps), privacy],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    rust_s = float(rust.stdout.strip().splitlines()[-1])
    model = vericonv.load(path)
    pm = model.private(privacy=privacy, seed=1)
    per = int(np.prod(model.input_shape))
    x = (np.arange(batch * per) % 251).astype(np.float32).reshape(batch, *model.input_shape) / 251.0
    pm(x)  # warm-up, as the Rust side does
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        pm(x)
        times.append(time.perf_counter() - t)
    py_s = statistics.median(times)
    print(f"{Path(path).name}, batch {batch}, {privacy}, RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}: "
          f"Rust {rust_s * 1e3:.1f} ms, Python {py_s * 1e3:.1f} ms per batch; Python / Rust = {py_s / rust_s:.3f}")


if __name__ == "__main__":
    main()
