"""Type stubs of the extension module (python/src/lib.rs); use the package `dbksvd` instead."""

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

__version__: str

class NativeError(Exception):
    """args: (kind, message), kind one of "input", "device", "io"."""

class NativeDictionary:
    @property
    def atoms(self) -> np.ndarray: ...
    @property
    def mean(self) -> np.ndarray: ...
    @property
    def k(self) -> Optional[int]: ...
    @property
    def groups(self) -> Optional[list[int]]: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    def save(self, path: str) -> None: ...
    def encode(
        self,
        x: np.ndarray,
        k: int,
        coder: str,
        groups: Optional[int] = None,
        adapter: Optional[str] = None,
        backend: Optional[str] = None,
    ) -> Tuple[np.ndarray, np.ndarray]: ...
    def to_saelens(
        self,
        folder: str,
        k: int,
        model_name: Optional[str] = None,
        hook_name: Optional[str] = None,
        context_size: Optional[int] = None,
        prepend_bos: Optional[bool] = None,
    ) -> None: ...

def load(path: str) -> NativeDictionary: ...
def train(
    data: Union[np.ndarray, Sequence[str]],
    options: dict[str, Any],
    eval: Union[np.ndarray, Sequence[str], None] = None,
    callback: Optional[Callable[[dict], Any]] = None,
) -> Tuple[NativeDictionary, str]: ...
def adapters(backend: Optional[str] = None) -> list[dict[str, Any]]: ...
def open_device(adapter: Optional[str] = None, backend: Optional[str] = None) -> dict[str, Any]: ...
