"""Shared fixtures of the Python package's tests: the repository's paths, the committed models,
MNIST, and `vericonv serve` processes on loopback."""

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def require(path: Path, what: str) -> Path:
    """`path`, or a skip (a failure when VERICONV_REQUIRE_DATA=1, as in .ci/run)."""
    if path.exists():
        return path
    if os.environ.get("VERICONV_REQUIRE_DATA") == "1":
        pytest.fail(f"VERICONV_REQUIRE_DATA=1 but {what} is missing: {path}")
    pytest.skip(f"{what} is missing: {path}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format) as an array."""
    data = path.read_bytes()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.fixture(scope="session")
def mnist_test():
    images = read_idx(require(ROOT / "data/mnist/t10k-images-idx3-ubyte", "MNIST (scripts/fetch-data.sh)"))
    labels = read_idx(require(ROOT / "data/mnist/t10k-labels-idx1-ubyte", "MNIST labels"))
    return images.astype(np.float32)[:, None] / 255.0, labels.astype(np.int64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve():
    """Starts `vericonv serve` processes on loopback; each call returns a `grpc://` URL."""
    binary = Path(os.environ.get("VERICONV_BIN", ROOT / "target/release/vericonv"))
    require(binary, "the vericonv binary (cargo build --release)")
    procs = []

    def start(*extra: str) -> str:
        port = free_port()
        p = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--backend", "cpu", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(p)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"grpc://127.0.0.1:{port}"
            except OSError:
                if p.poll() is not None:
                    pytest.fail(f"vericonv serve exited with {p.returncode}")
                time.sleep(0.05)
        pytest.fail("vericonv serve did not start within 20 s")

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
