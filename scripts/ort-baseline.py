#!/usr/bin/env python3
"""onnxruntime on an ONNX model, for `vericonv bench --model`: the median seconds of a forward
pass at a batch size and thread count, on seeded random inputs in [0, 1].

    python3 scripts/ort-baseline.py MODEL.onnx --batch B --threads T [--reps R]

Prints one JSON line: {"seconds": ..., "onnxruntime": VERSION}. Without onnxruntime, it
installs onnxruntime and numpy from PyPI into .venv-ort at the repository root and runs there.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-ort")


def ensure_onnxruntime():
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit("onnxruntime is not installed in .venv-ort")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "onnxruntime", "numpy"], check=True)
    os.execv(python, [python, *sys.argv])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    ensure_onnxruntime()
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [args.batch] + [d for d in inp.shape[1:]]
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    session.run(None, {inp.name: x})
    times = []
    for _ in range(max(args.reps, 1)):
        t = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"seconds": times[len(times) // 2], "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
