"""Type stubs of the native module (see vericonv/__init__.py for the documented API)."""

from os import PathLike
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

class Error(Exception): ...
class VerificationError(Error):
    cheater: str
class ModelError(Error): ...
class RemoteError(Error): ...
class ConfigError(Error): ...

class NativePrivate:
    @property
    def description(self) -> str: ...
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def quantized(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def prepare(self, images: int) -> float: ...
    def stats(self) -> List[Dict[str, Union[str, int, float]]]: ...

class NativeModel:
    def __init__(
        self,
        path: Union[str, PathLike[str]],
        input_shape: Optional[Sequence[int]] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        weight_bits: int = 8,
        act_bits: int = 8,
        outsource_linear: bool = False,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def input_shape(self) -> List[int]: ...
    @property
    def private_layers(self) -> int: ...
    @property
    def client_layers(self) -> List[Tuple[str, str]]: ...
    def float(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def private(
        self,
        privacy: str,
        clouds: List[str],
        backend: str,
        mode: str,
        rounds: int,
        seed: Optional[int],
        token_file: Optional[str],
        tls_ca: Optional[str],
        insecure_plaintext: bool,
        rank: int,
    ) -> NativePrivate: ...
