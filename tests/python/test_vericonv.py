"""The Python package against the promises of its API: private logits equal the quantized
model's in every mode, real accuracy, PyTorch modules through from_torch, remote clouds and a
lying one, typed errors for bad arguments, and inputs copied before the GIL is released."""

import threading
import warnings

import numpy as np
import pytest

import vericonv
from conftest import ROOT, require

LENET = ROOT / "models/lenet5-mnist.json"
MODES = ["pad", "two-server", "split-model", "lowrank"]


def private(model, privacy, **kw):
    if privacy == "lowrank":
        with pytest.warns(UserWarning, match="does not keep structured inputs private"):
            return model.private(privacy=privacy, **kw)
    return model.private(privacy=privacy, **kw)


@pytest.mark.parametrize("privacy", MODES)
def test_private_logits_equal_the_quantized_model_bit_for_bit(privacy):
    model = vericonv.load(LENET)
    assert model.input_shape == (1, 28, 28) and model.private_layers == 2
    rng = np.random.default_rng(7)
    print("seed = 7")
    pm = private(model, privacy)
    for batch in (1, 5):
        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        logits = pm(x)
        assert logits.dtype == np.float32 and logits.shape == (batch, 10)
        assert np.array_equal(logits.view(np.uint32), pm.quantized(x).view(np.uint32)), privacy
    stats = pm.stats()
    assert [s["calls"] for s in stats] == [2, 2] and all(s["rejected"] == 0 for s in stats)
    assert all(s["verified"] == s["calls"] for s in stats)
    if privacy in ("pad", "split-model"):
        assert all(s["offline_s"] > 0 for s in stats), "pads were drawn, their time reported"


def test_pads_prepared_ahead_leave_the_calls_only_online_work():
    pm = vericonv.load(LENET).private(privacy="pad", seed=3)
    assert pm.prepare(4) > 0
    x = np.random.default_rng(9).random((4, 1, 28, 28), dtype=np.float32)
    print("seed = 9")
    assert np.array_equal(pm(x).view(np.uint32), pm.quantized(x).view(np.uint32))
    assert all(s["offline_s"] == 0 for s in pm.stats()), "every pad was drawn by prepare"
    pm(x)  # the next call draws its own again
    assert all(s["offline_s"] > 0 for s in pm.stats())
    for bad in (-1, 2.5, True):
        with pytest.raises(vericonv.ConfigError):
            pm.prepare(bad)
    with pytest.raises(vericonv.ConfigError, match="GiB"):
        pm.prepare(10**12)


def test_outsourced_linear_layers_are_private_too():
    model = vericonv.load(LENET, outsource_linear=True)
    assert model.private_layers == 5, "2 convolutions and 3 linear layers"
    x = np.random.default_rng(8).random((3, 1, 28, 28), dtype=np.float32)
    print("seed = 8")
    pm = model.private(privacy="pad")
    assert np.array_equal(pm(x).view(np.uint32), pm.quantized(x).view(np.uint32))
    assert [s["calls"] for s in pm.stats()] == [1] * 5
    on_client = vericonv.load(LENET).private(privacy="pad").quantized(x)
    assert not np.array_equal(on_client, pm.quantized(x)), "the linear layers are quantized now"


def test_the_committed_lenet5_keeps_its_accuracy_on_mnist(mnist_test):
    images, labels = mnist_test
    pm = vericonv.load(LENET).private(privacy="pad")
    correct = 0
    for start in range(0, len(images), 1000):
        logits = pm(images[start : start + 1000])
        correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    accuracy = correct / len(images)
    print(f"LeNet-5 on the 10,000 MNIST test images, privately through Python: {accuracy:.2%}")
    # The accuracy table of docs/models.md: 98.66% float, quantized and private.
    assert abs(accuracy - 0.9866) <= 0.002


torch = pytest.importorskip("torch")


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, stride=2, groups=2),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def check_from_torch(module, x):
    model = vericonv.from_torch(module, torch.from_numpy(x))
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    got = model.float(x)
    worst = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-6)
    print(f"{type(module).__name__}: float logits within {worst:.1e} (relative) of torch's")
    assert worst <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    pm = model.private(privacy="split-model")
    logits = pm(x)
    assert np.array_equal(logits, pm.quantized(x))
    for q, f in zip(logits, expected):
        top = np.sort(f)[::-1]
        if top[0] - top[1] > 0.05 * max(abs(top[0]), 1.0):
            assert q.argmax() == f.argmax(), "quantized top-1 away from a near tie"
    return model


def test_from_torch_on_a_small_model_defined_here():
    torch.manual_seed(3)
    module = SmallNet()
    x = np.random.default_rng(3).random((4, 3, 16, 16), dtype=np.float32)
    model = check_from_torch(module, x)
    assert model.private_layers == 2


def test_from_torch_on_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.resnet18()
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    model = check_from_torch(module, x)
    assert model.private_layers == 20


@pytest.mark.parametrize("privacy", ["two-server", "split-model"])
def test_two_served_clouds_answer_and_a_lying_one_is_named(serve, privacy):
    model = vericonv.load(LENET)
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    a, b = serve(), serve()
    pm = model.private(privacy=privacy, clouds=[a, b])
    assert np.array_equal(pm(x), pm.quantized(x))
    liar = serve("--tamper-rate", "1")
    pm = model.private(privacy=privacy, clouds=[a, liar])
    with pytest.raises(vericonv.VerificationError) as caught:
        pm(x)
    assert caught.value.cheater == "cloud B"
    assert isinstance(caught.value, vericonv.Error)


def test_bad_arguments_raise_typed_errors(tmp_path):
    with pytest.raises(vericonv.ModelError):
        vericonv.load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(vericonv.ModelError):
        vericonv.load(junk)
    model = vericonv.load(LENET)
    with pytest.raises(vericonv.ConfigError, match="unknown privacy mode"):
        model.private(privacy="none")
    with pytest.raises(vericonv.ConfigError):
        model.private(privacy="split-model", clouds=["grpc://127.0.0.1:1"])
    with pytest.raises(vericonv.ConfigError):
        model.private(privacy="two-server", clouds=["grpc://127.0.0.1:7000", "grpc://localhost:7000"])
    with pytest.raises(vericonv.ConfigError):
        model.private(rounds=0)
    with pytest.raises(vericonv.RemoteError, match="grpcs"):
        model.private(clouds=["grpc://192.0.2.1:7000"])  # refused before any packet is sent
    with pytest.raises(vericonv.ConfigError):
        vericonv.load(LENET, mean=[0.1, 0.2])
    with pytest.raises(vericonv.ConfigError):
        vericonv.load(LENET, input_shape=[1, -28, 28])
    with pytest.raises(vericonv.ModelError, match="at most"):
        vericonv.load(ROOT / "data/zoo/dynamic_hw.onnx", input_shape=[3, 2**40, 2**40])
    with pytest.raises(vericonv.ConfigError, match="backend"):
        model.private(backend="tpu")
    with pytest.raises(vericonv.ConfigError, match="token_file"):
        model.private(privacy="pad", clouds=["grpc://127.0.0.1:1"], token_file=tmp_path / "missing")
    pm = model.private()
    with pytest.raises(vericonv.ConfigError, match="model takes"):
        pm(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(vericonv.ConfigError, match="NaN"):
        pm(np.full((1, 1, 28, 28), np.nan, np.float32))
    with pytest.raises(TypeError):
        pm(np.array([["a"]]))
    # Non-float32 and non-contiguous inputs are converted.
    x = np.random.default_rng(2).random((2, 1, 28, 56))[..., ::2]
    assert not x.flags["C_CONTIGUOUS"] and x.dtype == np.float64
    assert np.array_equal(pm(x), pm.quantized(x.astype(np.float32)))


def test_an_input_changed_during_or_after_the_call_does_not_change_the_result():
    pm = vericonv.load(LENET).private(privacy="pad", seed=5)
    x = np.random.default_rng(4).random((64, 1, 28, 28), dtype=np.float32)
    before, zeros = pm.quantized(x.copy()), pm.quantized(np.zeros_like(x))
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("logits", pm(x)))
    worker.start()
    while worker.is_alive():
        x[:] = 0.0  # the call copied its input before releasing the GIL
    worker.join()
    # The call ran on one whole snapshot of the input: the one before the writes, or all zeros
    # if it started after the first one; never on a mix of the two.
    got = out["logits"].copy()
    assert np.array_equal(got, before) or np.array_equal(got, zeros)
    x[:] = 1.0
    assert np.array_equal(out["logits"], got), "the result does not alias the input"


def test_bit_widths_and_the_lowrank_rank_are_reachable():
    x = np.random.default_rng(6).random((2, 1, 28, 28), dtype=np.float32)
    model = vericonv.load(LENET, weight_bits=6, act_bits=7)
    pm = model.private(privacy="split-model")
    assert np.array_equal(pm(x), pm.quantized(x))
    assert not np.array_equal(pm.quantized(x), vericonv.load(LENET).private().quantized(x)), "6/7 bits differ from 8/8"
    with pytest.warns(UserWarning):
        low = model.private(privacy="lowrank", rank=3)
    assert np.array_equal(low(x), low.quantized(x))
    for bad in ({"weight_bits": 1}, {"act_bits": 17}):
        with pytest.raises(vericonv.ConfigError):
            vericonv.load(LENET, **bad)
    with pytest.raises(vericonv.ConfigError):
        model.private(privacy="lowrank", rank=0)


def test_lowrank_warns_and_the_default_is_pad():
    model = vericonv.load(LENET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "pad" in repr(model.private())
    with pytest.warns(UserWarning):
        model.private(privacy="lowrank")
