"""The private pipeline from Python against onnxruntime on the same ONNX model and batch.

    python examples/python/benchmark.py data/torchvision/resnet18.onnx --batch 16 [--privacy pad]

The time of a private call includes the in-process cloud (a CPU backend here) and, without
prepared pads, drawing them; `stats()` splits client, cloud and offline time.
"""

import argparse
import statistics
import time

import numpy as np

import vericonv


def median_time(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--privacy", default="pad")
    args = ap.parse_args()
    model = vericonv.load(args.model)
    x = np.random.default_rng(0).random((args.batch, *model.input_shape), dtype=np.float32)
    pm = model.private(privacy=args.privacy)
    private_s = median_time(lambda: pm(x), args.reps)
    stats = pm.stats()
    calls = max(stats[0]["calls"], 1) if stats else 1
    client = sum(s["client_s"] for s in stats) / calls
    cloud = sum(s["cloud_s"] for s in stats) / calls
    offline = sum(s["offline_s"] for s in stats) / calls
    print(f"vericonv ({args.privacy}): {private_s * 1e3:.1f} ms per batch of {args.batch} "
          f"(of which client protocol {client * 1e3:.1f} ms, cloud {cloud * 1e3:.1f} ms, pads {offline * 1e3:.1f} ms)")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed (pip install onnxruntime): no baseline")
        return
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ort_s = median_time(lambda: session.run(None, {name: x}), args.reps)
    print(f"onnxruntime (1 thread): {ort_s * 1e3:.1f} ms per batch")


if __name__ == "__main__":
    main()
