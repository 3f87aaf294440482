"""Trains the models committed under models/ and exports them in vericonv's native format.

The network is described by the same JSON layer list that vericonv's Rust runtime reads; this
script interprets it with JAX, so what is trained is exactly what is exported:
    models/<name>.json          architecture, input normalisation, training record
    models/<name>.safetensors   f32 weights (BatchNorm running statistics included)

Usage (see scripts/train.sh, which installs the pinned requirements first):
    python scripts/train.py --arch lenet5 --dataset mnist --epochs 3 --seed 0
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, path
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_dataset(name, data_dir):
    """Returns (x_train, y_train, x_test, y_test); x in [0, 1], shape N×1×H×W."""
    if name in ("mnist", "fashion-mnist"):
        ext = "" if name == "mnist" else ".gz"
        d = os.path.join(data_dir, name)
        part = lambda kind, what: read_idx(os.path.join(d, f"{kind}-{what}{ext}"))
        xtr, ytr = part("train", "images-idx3-ubyte"), part("train", "labels-idx1-ubyte")
        xte, yte = part("t10k", "images-idx3-ubyte"), part("t10k", "labels-idx1-ubyte")
        f = lambda x: (x.astype(np.float32) / 255.0)[:, None, :, :]
        return f(xtr), ytr.astype(np.int32), f(xte), yte.astype(np.int32)
    if name == "digits":
        rows = np.loadtxt(os.path.join(data_dir, "digits", "digits.csv.gz"), delimiter=",", dtype=np.float32)
        x = (rows[:, :64] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
        y = rows[:, 64].astype(np.int32)
        # The last 360 rows (20%) are the test split, as vericonv's loader defines it.
        return x[:-360], y[:-360], x[-360:], y[-360:]
    raise SystemExit(f"unknown dataset {name}")


def conv(name, out, k, pad=0, stride=1, groups=1, bias=True):
    p = [pad] * 4 if isinstance(pad, int) else pad
    return {"name": name, "op": "conv2d", "out_channels": out, "kernel": [k, k], "stride": [stride, stride],
            "padding": p, "dilation": [1, 1], "groups": groups, "bias": bias}


def bn(name, inputs=None):
    d = {"name": name, "op": "batchnorm2d", "eps": 1e-5}
    if inputs:
        d["inputs"] = inputs
    return d


def relu(name, inputs=None):
    d = {"name": name, "op": "relu"}
    if inputs:
        d["inputs"] = inputs
    return d


def pool(name, op, k, stride=None):
    return {"name": name, "op": op, "kernel": [k, k], "stride": [stride or k] * 2, "padding": [0, 0, 0, 0], "ceil_mode": False}


def linear(name, out):
    return {"name": name, "op": "linear", "out_features": out, "bias": True}


def arch(name, hw):
    if name == "lenet5":
        # LeNet-5 with average-pool subsampling; 3×3 kernels on the 8×8 digits.
        k, p = (5, 2) if hw >= 28 else (3, 1)
        return [conv("conv1", 6, k, p), relu("relu1"), pool("pool1", "avgpool2d", 2),
                conv("conv2", 16, k, 0 if hw >= 28 else 1), relu("relu2"), pool("pool2", "avgpool2d", 2),
                {"name": "flatten", "op": "flatten"}, linear("fc1", 120), relu("relu3"),
                linear("fc2", 84), relu("relu4"), linear("fc3", 10)]
    if name == "vgg":
        return [conv("conv1_1", 32, 3, 1), relu("relu1_1"), conv("conv1_2", 32, 3, 1), relu("relu1_2"),
                pool("pool1", "maxpool2d", 2),
                conv("conv2_1", 64, 3, 1), relu("relu2_1"), conv("conv2_2", 64, 3, 1), relu("relu2_2"),
                pool("pool2", "maxpool2d", 2),
                conv("conv3_1", 128, 3, 1), relu("relu3_1"), {"name": "gap", "op": "global_avgpool"},
                {"name": "flatten", "op": "flatten"}, linear("fc", 10)]
    if name == "resnet":
        def block(prefix, inp, ch, stride, project):
            layers = [conv(f"{prefix}.conv1", ch, 3, 1, stride, bias=False), bn(f"{prefix}.bn1"), relu(f"{prefix}.relu1"),
                      conv(f"{prefix}.conv2", ch, 3, 1, bias=False), bn(f"{prefix}.bn2")]
            layers[0]["inputs"] = [inp]
            short = inp
            if project:
                sc = conv(f"{prefix}.down", ch, 1, 0, stride, bias=False)
                sc["inputs"] = [inp]
                layers += [sc, bn(f"{prefix}.down_bn")]
                short = f"{prefix}.down_bn"
            layers += [{"name": f"{prefix}.add", "op": "add", "inputs": [f"{prefix}.bn2", short]}, relu(f"{prefix}.out")]
            return layers
        return ([conv("stem", 32, 3, 1, bias=False), bn("stem_bn"), relu("stem_relu")]
                + block("block1", "stem_relu", 32, 1, False)
                + block("block2", "block1.out", 64, 2, True)
                + block("block3", "block2.out", 64, 1, False)
                + [{"name": "gap", "op": "global_avgpool"}, {"name": "flatten", "op": "flatten"}, linear("fc", 10)])
    raise SystemExit(f"unknown arch {name}")


def inputs_of(spec, i, layer):
    return layer.get("inputs") or ["input" if i == 0 else spec[i - 1]["name"]]


def init(spec, shape, key):
    """He-normal weights; returns (params, state, shapes)."""
    params, state, shapes = {}, {}, {"input": shape}
    for i, l in enumerate(spec):
        ins = [shapes[n] for n in inputs_of(spec, i, l)]
        c, h, w = ins[0] if len(ins[0]) == 3 else (ins[0][0], 1, 1)
        op, n = l["op"], l["name"]
        key, sub = jax.random.split(key)
        if op == "conv2d":
            kh, kw = l["kernel"]
            fan_in = c // l["groups"] * kh * kw
            params[n + ".weight"] = jax.random.normal(sub, (l["out_channels"], c // l["groups"], kh, kw)) * np.sqrt(2.0 / fan_in)
            if l["bias"]:
                params[n + ".bias"] = jnp.zeros(l["out_channels"])
            pt, pl, pb, pr = l["padding"]
            ho = (h + pt + pb - kh) // l["stride"][0] + 1
            wo = (w + pl + pr - kw) // l["stride"][1] + 1
            shapes[n] = (l["out_channels"], ho, wo)
        elif op == "batchnorm2d":
            params[n + ".weight"], params[n + ".bias"] = jnp.ones(c), jnp.zeros(c)
            state[n + ".running_mean"], state[n + ".running_var"] = jnp.zeros(c), jnp.ones(c)
            shapes[n] = ins[0]
        elif op in ("maxpool2d", "avgpool2d"):
            shapes[n] = (c, (h - l["kernel"][0]) // l["stride"][0] + 1, (w - l["kernel"][1]) // l["stride"][1] + 1)
        elif op == "global_avgpool":
            shapes[n] = (c, 1, 1)
        elif op == "flatten":
            shapes[n] = (int(np.prod(ins[0])),)
        elif op == "linear":
            fan_in = ins[0][0]
            params[n + ".weight"] = jax.random.normal(sub, (l["out_features"], fan_in)) * np.sqrt(2.0 / fan_in)
            params[n + ".bias"] = jnp.zeros(l["out_features"])
            shapes[n] = (l["out_features"],)
        else:
            shapes[n] = ins[0]
    return params, state, shapes


def forward(spec, params, state, x, train):
    vals, new_state = {"input": x}, dict(state)
    for i, l in enumerate(spec):
        xs = [vals[n] for n in inputs_of(spec, i, l)]
        a, op, n = xs[0], l["op"], l["name"]
        if op == "conv2d":
            pt, pl, pb, pr = l["padding"]
            y = jax.lax.conv_general_dilated(a, params[n + ".weight"], tuple(l["stride"]), [(pt, pb), (pl, pr)],
                                             rhs_dilation=tuple(l["dilation"]), feature_group_count=l["groups"],
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
            if l["bias"]:
                y = y + params[n + ".bias"][None, :, None, None]
        elif op == "batchnorm2d":
            if train:
                mean, var = a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))
                new_state[n + ".running_mean"] = 0.9 * state[n + ".running_mean"] + 0.1 * mean
                new_state[n + ".running_var"] = 0.9 * state[n + ".running_var"] + 0.1 * var
            else:
                mean, var = state[n + ".running_mean"], state[n + ".running_var"]
            inv = params[n + ".weight"] / jnp.sqrt(var + l["eps"])
            y = (a - mean[None, :, None, None]) * inv[None, :, None, None] + params[n + ".bias"][None, :, None, None]
        elif op == "relu":
            y = jax.nn.relu(a)
        elif op == "maxpool2d":
            y = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 1, *l["kernel"]), (1, 1, *l["stride"]), "VALID")
        elif op == "avgpool2d":
            kh, kw = l["kernel"]
            y = jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 1, kh, kw), (1, 1, *l["stride"]), "VALID") / (kh * kw)
        elif op == "global_avgpool":
            y = a.mean(axis=(2, 3), keepdims=True)
        elif op == "flatten":
            y = a.reshape(a.shape[0], -1)
        elif op == "linear":
            y = a @ params[n + ".weight"].T + params[n + ".bias"]
        elif op == "add":
            y = xs[0] + xs[1]
        else:
            raise SystemExit(f"unknown op {op}")
        vals[n] = y
    return vals[spec[-1]["name"]], new_state


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=["lenet5", "vgg", "resnet"])
    ap.add_argument("--dataset", required=True, choices=["mnist", "fashion-mnist", "digits"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(ROOT, "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    args = ap.parse_args()

    xtr, ytr, xte, yte = load_dataset(args.dataset, args.data)
    mean, std = float(xtr.mean()), float(xtr.std())
    norm = lambda x: (x - mean) / std
    spec = arch(args.arch, xtr.shape[-1])
    params, state, _ = init(spec, xtr.shape[1:], jax.random.PRNGKey(args.seed))
    steps = args.epochs * (len(xtr) // args.batch)
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, steps))
    opt_state = opt.init(params)

    def loss_fn(p, s, x, y):
        logits, s2 = forward(spec, p, s, x, True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s2

    @jax.jit
    def step(p, s, o, x, y):
        (loss, s2), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), s2, o, loss

    predict = jax.jit(lambda p, s, x: forward(spec, p, s, x, False)[0].argmax(-1))
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(xtr))
        for b in range(len(xtr) // args.batch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            params, state, opt_state, loss = step(params, state, opt_state, norm(xtr[idx]), ytr[idx])
        correct = sum(int((predict(params, state, norm(xte[i : i + 1000])) == yte[i : i + 1000]).sum()) for i in range(0, len(xte), 1000))
        print(f"{args.arch}/{args.dataset} epoch {epoch + 1}: loss {float(loss):.4f}, test accuracy {correct / len(xte):.4f} ({time.time() - t0:.0f} s)", flush=True)

    name = f"{args.arch}-{args.dataset}"
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in {**params, **state}.items()}
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, name + ".safetensors"))
    model = {
        "format": "vericonv-model/1",
        "name": name,
        "input": {"channels": int(xtr.shape[1]), "height": int(xtr.shape[2]), "width": int(xtr.shape[3]), "mean": [mean], "std": [std]},
        "num_classes": 10,
        "layers": spec,
        "training": {
            "command": "python scripts/train.py " + " ".join(sys.argv[1:]),
            "framework": f"jax {jax.__version__}, optax {optax.__version__}",
            "float_test_accuracy": correct / len(xte),
        },
    }
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(model, f, indent=1)
    print(f"wrote models/{name}.json and models/{name}.safetensors")


if __name__ == "__main__":
    main()
