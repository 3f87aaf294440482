"""Private, verified CNN inference on untrusted cloud GPUs.

Load a model (ONNX, or a PyTorch module through ``from_torch``), make it private on one or two
clouds, and call it on NumPy arrays::

    import vericonv
    model = vericonv.load("resnet18.onnx", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    pm = model.private(privacy="pad")
    logits = pm(x)              # float32 N x C x H x W in, logits out
    ref = pm.quantized(x)       # the quantized plaintext model: equal to logits bit for bit
    pm.stats()                  # per private layer: calls, verified, rejected, times

Every convolution runs on the clouds, masked; every answer is verified before anything of it
is decrypted; everything else runs here. Errors derive from :class:`vericonv.Error`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._vericonv import (
    ConfigError,
    Error,
    ModelError,
    NativeModel,
    NativePrivate,
    RemoteError,
    VerificationError,
    __version__,
)

__all__ = [
    "ConfigError",
    "Error",
    "Model",
    "ModelError",
    "PrivateModel",
    "RemoteError",
    "VerificationError",
    "from_torch",
    "load",
    "__version__",
]

PRIVACY_MODES = ("pad", "two-server", "split-model", "lowrank")


def _as_input(x: Any, shape: Tuple[int, ...]) -> np.ndarray:
    """``x`` as a C-contiguous float32 array of ``N x shape`` (a copy, so that the caller may
    change ``x`` afterwards), or a ``TypeError`` / ``ConfigError`` saying what is wrong."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
            x = x.detach().cpu().numpy()
        else:
            x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"expected a float32 array of shape N x {list(shape)}, got dtype {x.dtype}")
    if x.ndim == len(shape):
        x = x[np.newaxis]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or x.shape[0] == 0:
        raise ConfigError(f"an array of shape {list(x.shape)}; the model takes N x {list(shape)}")
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(x).all():
        raise ConfigError("the input holds NaN or infinite values")
    return x


class PrivateModel:
    """A model whose convolutions run privately on untrusted clouds. Call it on a batch."""

    def __init__(self, native: NativePrivate, input_shape: Tuple[int, ...]) -> None:
        self._native = native
        self.input_shape = input_shape

    def __call__(self, x: Any) -> np.ndarray:
        """Private, verified logits of ``x`` (``N x C x H x W``, or one image ``C x H x W``)."""
        return self._native.run(_as_input(x, self.input_shape))

    def quantized(self, x: Any) -> np.ndarray:
        """The quantized plaintext model's logits of ``x``, computed here: what the private
        call must equal bit for bit."""
        return self._native.quantized(_as_input(x, self.input_shape))

    def prepare(self, images: int) -> float:
        """Draws the pads of the next ``images`` images now, on this machine's CPU (modes
        ``pad`` and ``split-model``), so that the calls using them do only online work; returns
        the seconds it took. Without it, each call draws its missing pads itself and reports
        that time as ``offline_s``."""
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ConfigError(f"images must be a non-negative integer, got {images!r}")
        return self._native.prepare(images)

    def stats(self) -> List[Dict[str, Any]]:
        """Per private layer so far: ``calls``, ``verified``, ``rejected``, and ``client_s``,
        ``cloud_s`` and ``offline_s`` (pads) in seconds."""
        return self._native.stats()

    def __repr__(self) -> str:
        return f"PrivateModel({self._native.description})"


class Model:
    """A model loaded for private inference. Make it private with :meth:`private`."""

    def __init__(self, native: NativeModel) -> None:
        self._native = native

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The shape of one input, without the batch dimension."""
        return tuple(self._native.input_shape)

    @property
    def private_layers(self) -> int:
        """How many convolutions run privately."""
        return self._native.private_layers

    @property
    def client_layers(self) -> List[Tuple[str, str]]:
        """Convolutions that stay on the client, each with the reason."""
        return list(self._native.client_layers)

    def float(self, x: Any) -> np.ndarray:
        """The float model's outputs of ``x``, computed here (no cloud, no quantization)."""
        return self._native.float(_as_input(x, self.input_shape))

    def private(
        self,
        privacy: str = "pad",
        clouds: Optional[Sequence[str]] = None,
        backend: str = "cpu",
        mode: str = "fast",
        rounds: int = 1,
        seed: Optional[int] = None,
        token_file: Optional[Union[str, os.PathLike]] = None,
        tls_ca: Optional[Union[str, os.PathLike]] = None,
        insecure_plaintext: bool = False,
        rank: int = 2,
    ) -> PrivateModel:
        """The private model.

        ``privacy``: ``"pad"`` (default: one cloud, one-time pads made here),
        ``"two-server"`` and ``"split-model"`` (two clouds that must not collude; split-model
        hides the weights too), or ``"lowrank"`` (the paper's scheme, whose input privacy does
        not hold on structured data: it warns). ``clouds``: ``None`` for clouds in this process
        on ``backend`` (``"cpu"`` or ``"gpu"``), else one URL per cloud of the mode
        (``grpcs://host:port``; plaintext ``grpc://`` only to loopback unless
        ``insecure_plaintext``). ``mode``: verification, ``"fast"`` or ``"strict"``, with
        ``rounds`` rounds. ``seed`` makes keys and masks reproducible: for tests only.
        ``rank`` is mode lowrank's mask rank.
        """
        if privacy not in PRIVACY_MODES:
            raise ConfigError(f"unknown privacy mode {privacy!r}: one of {', '.join(PRIVACY_MODES)}")
        if isinstance(clouds, str):
            clouds = [clouds]
        if not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise ConfigError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
        if backend not in ("cpu", "gpu"):
            raise ConfigError(f"unknown backend {backend!r}: cpu or gpu")
        for what, path in (("token_file", token_file), ("tls_ca", tls_ca)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{what} {os.fspath(path)!r} is not a file")
        native = self._native.private(
            privacy,
            list(clouds or []),
            backend,
            mode,
            rounds,
            seed,
            None if token_file is None else os.fspath(token_file),
            None if tls_ca is None else os.fspath(tls_ca),
            bool(insecure_plaintext),
            int(rank),
        )
        return PrivateModel(native, self.input_shape)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, input {list(self.input_shape)}, {self.private_layers} private convolutions)"


def _floats(v: Optional[Union[float, Sequence[float]]], what: str) -> Optional[List[float]]:
    if v is None:
        return None
    values = [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
    if not values:
        raise ConfigError(f"{what} is empty")
    return values


def load(
    path: Union[str, os.PathLike],
    mean: Optional[Union[float, Sequence[float]]] = None,
    std: Optional[Union[float, Sequence[float]]] = None,
    input_shape: Optional[Sequence[int]] = None,
    weight_bits: int = 8,
    act_bits: int = 8,
    outsource_linear: bool = False,
) -> Model:
    """Loads an ONNX model, or a native one (``.json``). ``mean`` and ``std`` (one value, or
    one per channel) normalise inputs as ``(x - mean) / std``; ``input_shape`` (``C, H, W``)
    fixes dynamic dimensions; ``weight_bits`` and ``act_bits`` (2 to 16) set the
    quantization. With ``outsource_linear``, the linear layers (``Gemm``/``MatMul`` with
    constant weights) go to the clouds too, as 1×1 convolutions (their masks are weaker);
    by default they run on the client in float."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    shape = None if input_shape is None else [int(d) for d in input_shape]
    if shape is not None and any(d < 1 for d in shape):
        raise ConfigError(f"input_shape must hold positive dimensions, got {shape}")
    for what, bits in (("weight_bits", weight_bits), ("act_bits", act_bits)):
        if not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ConfigError(f"{what} must be an integer from 2 to 16, got {bits!r}")
    return Model(
        NativeModel(
            path, shape, _floats(mean, "mean"), _floats(std, "std"), weight_bits, act_bits, bool(outsource_linear)
        )
    )


def from_torch(
    module: Any,
    example_input: Any,
    mean: Optional[Union[float, Sequence[float]]] = None,
    std: Optional[Union[float, Sequence[float]]] = None,
    opset: int = 13,
    weight_bits: int = 8,
    act_bits: int = 8,
    outsource_linear: bool = False,
) -> Model:
    """Exports a PyTorch module through ``torch.onnx`` (batch dimension left free) and loads
    it. ``example_input`` is one batch the module accepts."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("vericonv.from_torch needs PyTorch: pip install torch") from e
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{type(module).__name__}.onnx")
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    example_input,
                    path,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                    opset_version=opset,
                )
        finally:
            module.train(was_training)
        return load(
            path, mean=mean, std=std, weight_bits=weight_bits, act_bits=act_bits, outsource_linear=outsource_linear
        )
