"""dbksvd: Double-Batch KSVD sparse dictionary learning on any GPU through WebGPU.

Learns unit-norm atoms D [K, d] such that activations Y [N, d] are approximated by X·D with at
most k nonzeros per row of X (Valentin et al., arXiv 2505.18441), on Vulkan, Metal or DX12
(lavapipe on machines without a GPU).

    import dbksvd
    d = dbksvd.train(acts, atoms=4096, k=32, epochs=5, out="run1")  # acts: [N, d] array or files
    indices, values = d.encode(acts[:100])                          # int32 / float32 [100, 32]
    print(d.fvu(acts[:1000]))
    d.to_saelens("run1-sae", model_name="gpt2", hook_name="blocks.8.hook_resid_pre")

Every call releases the GIL while the GPU works and takes ``adapter=`` (a substring of the
adapter's name) and ``backend=`` (``"vulkan"``, ``"metal"``, ``"dx12"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native

__version__: str = _native.__version__

__all__ = [
    "DbksvdError",
    "InputError",
    "DeviceError",
    "FileError",
    "Dictionary",
    "DictionaryLearning",
    "train",
    "load",
    "devices",
]


class DbksvdError(Exception):
    """An error reported by dbksvd, carrying the library's message (file, tensor, row, shapes,
    limits)."""


class InputError(DbksvdError, ValueError):
    """Bad input: shapes, dtypes, non-finite values, options, file contents."""


class DeviceError(DbksvdError, RuntimeError):
    """The GPU could not be opened, ran out of memory, lost the device, or the job exceeds its
    limits."""


class FileError(DbksvdError, OSError):
    """A file or folder could not be read or written."""


_KINDS = {"input": InputError, "device": DeviceError, "io": FileError}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turns the extension's errors into the classes above."""
    try:
        yield
    except _native.NativeError as e:
        kind, message = e.args
        raise _KINDS.get(kind, DbksvdError)(message) from None


Array = Any
"""An [N, d] array: NumPy (float32, float16, float64, ml_dtypes.bfloat16), or anything with
``__array__`` or ``__dlpack__`` on the CPU (a torch tensor)."""

Data = Union[Array, str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]
"""An array, or activation files (safetensors or .npy; folders and shards) streamed from disk."""


def _rows(x: Array, what: str) -> np.ndarray:
    """`x` as a C-contiguous float32 [N, d] array: the same memory when it already is one, a
    converted copy otherwise."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):  # torch.Tensor
        x = x.detach()
        if x.device.type != "cpu":
            raise InputError(f"{what} is on {x.device}; move it to the CPU first (.cpu())")
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        if hasattr(x, "__array__"):
            x = np.asarray(x)
        elif hasattr(x, "__dlpack__"):
            x = np.from_dlpack(x)
        else:
            raise InputError(f"{what}: expected an array [N, d], got {type(x).__name__}")
    if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
        raise InputError(
            f"{what} has dtype {x.dtype}; expected float32, float16, bfloat16 or float64"
        )
    if x.ndim != 2:
        raise InputError(f"{what} has shape {tuple(x.shape)}; expected [N, d]")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{what} has shape {tuple(x.shape)}: no rows or no columns")
    return np.ascontiguousarray(x, dtype=np.float32)


def _data(data: Data, what: str) -> Union[np.ndarray, list]:
    """File paths as a list of str, anything else as rows."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    if isinstance(data, (list, tuple)) and data and all(
        isinstance(p, (str, os.PathLike)) for p in data
    ):
        return [os.fspath(p) for p in data]
    return _rows(data, what)


class _Progress:
    """A progress bar: tqdm when installed, else one plain line rewritten on stderr (when it is
    a terminal: a log file gets no carriage-return lines)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=0, unit="batch", leave=False)
            except ImportError:
                self.bar = None
                self.enabled = sys.stderr.isatty()

    def update(self, done: int, total: int, metrics: dict) -> None:
        if not self.enabled:
            return
        text = f"epoch {metrics['epoch']} FVU {metrics['fvu']:.4f}"
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.refresh()
        else:
            sys.stderr.write(f"\r{done}/{total} batches  {text}  ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


class Dictionary:
    """A trained dictionary: atoms [K, d] (unit rows), the mean [d] subtracted before coding,
    and how it was trained.

    Attributes:
        config: the training configuration (dict), when known.
        metrics: per-epoch metrics of the run that trained it (empty for a loaded one).
        stop: why that run stopped (``"Epochs"``, ``"TimeLimit"``, ``"Converged"``).
    """

    def __init__(self, native: Any, summary: Optional[dict] = None) -> None:
        self._native = native
        summary = summary or {}
        config = summary.get("config")
        if config is None and "config" in native.metadata:
            config = json.loads(native.metadata["config"])
        self.config: Optional[dict] = config
        self.metrics: list = summary.get("epochs", [])
        self.batch_metrics: list = summary.get("batches", [])
        self.stop: Optional[str] = summary.get("stop")

    def __repr__(self) -> str:
        k, d = self.atoms.shape
        return f"Dictionary(K={k}, d={d}, k={self.k}, groups={self.groups})"

    @property
    def atoms(self) -> np.ndarray:
        """Atoms D [K, d], float32 (a copy)."""
        return self._native.atoms

    @property
    def mean(self) -> np.ndarray:
        """The mean [d] subtracted from every row before coding (zeros without centring)."""
        return self._native.mean

    @property
    def k(self) -> Optional[int]:
        """The k it was trained with."""
        return self._native.k

    @property
    def groups(self) -> Optional[list]:
        """The Matryoshka groups' ends (atoms ends[g-1]..ends[g] form group g), if any."""
        with _errors():
            return self._native.groups

    def encode(
        self,
        x: Array,
        k: Optional[int] = None,
        coder: Optional[str] = None,
        groups: Optional[int] = None,
        *,
        adapter: Optional[str] = None,
        backend: Optional[str] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Sparse codes of `x` [N, d]: ``(indices int32 [N, k], values float32 [N, k])``, −1 and
        0 in empty slots; the same codes ``dbksvd encode`` writes.

        Args:
            k: nonzeros per row (default: the k it was trained with).
            coder: ``"omp"`` (default, Batch-OMP) or ``"mp"`` (matching pursuit with refit).
            groups: code with the first `groups` Matryoshka groups only.
        """
        x = _rows(x, "x")
        k = self._k(k)
        with _errors():
            return self._native.encode(x, k, coder or "omp", groups, adapter, backend)

    def decode(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Rows x̂ = Σ values·atoms[indices] + mean [N, d] from codes (slots with −1 ignored)."""
        indices = np.asarray(indices)
        values = np.asarray(values, dtype=np.float32)
        if indices.shape != values.shape or indices.ndim != 2:
            raise InputError(
                f"indices {indices.shape} and values {values.shape} must be one [N, k] shape"
            )
        atoms = self.atoms
        used = indices >= 0
        if np.any(indices >= atoms.shape[0]):
            raise InputError(f"an index is ≥ K = {atoms.shape[0]}")
        picked = atoms[np.where(used, indices, 0)]  # [N, k, d]
        weights = np.where(used, values, 0.0)[..., None]
        return (picked * weights).sum(axis=1) + self.mean

    def fvu(
        self,
        x: Array,
        k: Optional[int] = None,
        coder: Optional[str] = None,
        *,
        adapter: Optional[str] = None,
        backend: Optional[str] = None,
    ) -> float:
        """Fraction of variance unexplained Σ‖x − x̂‖² / Σ‖x − x̄‖² of `x` coded with `k` atoms."""
        x = _rows(x, "x")
        xhat = self.decode(*self.encode(x, k, coder, adapter=adapter, backend=backend))
        residual = np.square(x.astype(np.float64) - xhat).sum()
        total = np.square(x - x.mean(axis=0, dtype=np.float64)).sum()
        return float(residual / total)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the dictionary as safetensors (atomically), loadable by `load`."""
        with _errors():
            self._native.save(os.fspath(path))

    def to_saelens(
        self,
        folder: Union[str, "os.PathLike[str]"],
        model_name: Optional[str] = None,
        hook_name: Optional[str] = None,
        context_size: Optional[int] = None,
        prepend_bos: Optional[bool] = None,
        k: Optional[int] = None,
    ) -> None:
        """Writes `folder` for SAELens' ``SAE.load_from_disk`` (``matching_pursuit``, W_dec =
        [D; −D] so signed codes stay non-negative) with the metadata SAEBench reads: model and
        hook names (hook_layer from ``blocks.N.…``), context size and BOS."""
        with _errors():
            self._native.to_saelens(
                os.fspath(folder), self._k(k), model_name, hook_name, context_size, prepend_bos
            )

    def _k(self, k: Optional[int]) -> int:
        if k is None:
            k = self.k
        if k is None:
            raise InputError("this dictionary does not record its k; pass k=")
        return int(k)


def load(path: Union[str, "os.PathLike[str]"]) -> Dictionary:
    """Loads a dictionary written by `Dictionary.save` or ``dbksvd train``."""
    with _errors():
        return Dictionary(_native.load(os.fspath(path)))


def train(
    data: Data,
    atoms: int,
    k: int,
    *,
    epochs: int = 10,
    batch: Optional[int] = None,
    coder: str = "mp",
    matryoshka: Union[int, Sequence[int], None] = None,
    memory: float = 0.8,
    center: bool = True,
    eval: Optional[Data] = None,
    seed: int = 0,
    time_limit: Optional[float] = None,
    out: Union[str, "os.PathLike[str]", None] = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[dict], Any]] = None,
    model_name: Optional[str] = None,
    hook_name: Optional[str] = None,
    context_size: Optional[int] = None,
    prepend_bos: Optional[bool] = None,
    adapter: Optional[str] = None,
    backend: Optional[str] = None,
) -> Dictionary:
    """Trains a dictionary of `atoms` atoms with at most `k` nonzeros per row on `data`.

    Args:
        data: an array [N, d] (borrowed without a copy when C-contiguous float32), or activation
            files (safetensors or .npy, folders, shards) streamed from disk epoch after epoch.
        epochs: passes over the data.
        batch: samples per batch (default: the largest up to 4096 the adapter holds).
        coder: the training coder, ``"mp"`` (matching pursuit with refit, the default as in
            ``dbksvd train`` and the paper) or ``"omp"``.
        matryoshka: the smallest group (groups double up to `atoms`) or the groups' ends.
        memory: the atom memory's decay γ (0 disables it).
        center: subtract the data mean before coding.
        eval: held-out data scored (by OMP) after every epoch.
        time_limit: seconds after which training stops at the end of a batch.
        out: a folder for what ``dbksvd train`` writes: dictionary, checkpoint, SAELens folder,
            traces. With `resume`, training continues from its checkpoint.
        force: write into `out` even if it holds files dbksvd did not write.
        progress: show a progress bar (tqdm when installed).
        callback: called after every batch with a dict of its metrics (``epoch``, ``batch``,
            ``fvu``, ``relative_residual``, ``l0``, …, ``done``, ``total``). An exception it
            raises, or Ctrl-C, stops training at that batch; the checkpoint in `out` is kept and
            the exception re-raised.
        model_name, hook_name, context_size, prepend_bos: metadata of the SAELens folder.
    """
    options = {
        "atoms": int(atoms),
        "k": int(k),
        "epochs": int(epochs),
        "batch": None if batch is None else int(batch),
        "coder": coder,
        "matryoshka": None
        if matryoshka is None
        else [int(matryoshka)]
        if np.isscalar(matryoshka)
        else [int(m) for m in matryoshka],
        "memory": float(memory),
        "center": bool(center),
        "seed": int(seed),
        "time_limit": None if time_limit is None else float(time_limit),
        "out": None if out is None else os.fspath(out),
        "force": bool(force),
        "resume": bool(resume),
        "model_name": model_name,
        "hook_name": hook_name,
        "context_size": context_size,
        "prepend_bos": prepend_bos,
        "adapter": adapter,
        "backend": backend,
    }
    rows = _data(data, "data")
    held_out = None if eval is None else _data(eval, "eval")
    bar = _Progress(progress)

    def on_batch(p: dict) -> None:
        metrics = json.loads(p["metrics"])
        bar.update(p["done"], p["total"], metrics)
        if callback is not None:
            callback({**metrics, "done": p["done"], "total": p["total"]})

    try:
        with _errors():
            native, summary = _native.train(rows, options, held_out, on_batch)
    finally:
        bar.close()
    return Dictionary(native, json.loads(summary))


def devices(backend: Optional[str] = None) -> list:
    """The adapters wgpu finds, each a dict (name, backend, device_type, driver, vendor,
    device) with the limits dbksvd plans with on it, or the error opening it."""
    with _errors():
        found = _native.adapters(backend)
    for adapter in found:
        try:
            with _errors():
                opened = _native.open_device(adapter["name"], adapter["backend"].lower())
            adapter.update({key: v for key, v in opened.items() if key.startswith("max_")})
        except DbksvdError as e:
            adapter["error"] = str(e)
    return found


class DictionaryLearning:
    """DB-KSVD in scikit-learn's conventions.

    ``DictionaryLearning(n_components=512, k=16, epochs=5).fit(X)`` trains; ``components_`` holds
    the atoms [n_components, d] and ``mean_`` the mean; ``transform`` gives codes (dense
    [N, n_components], or ``(indices, values)`` with ``sparse=True``) and
    ``inverse_transform`` the rows back. Other keyword arguments go to `train`.
    """

    def __init__(self, n_components: int = 512, k: int = 16, **train_options: Any) -> None:
        self.n_components = n_components
        self.k = k
        self.train_options = train_options

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments (scikit-learn's `clone` and grid search use them)."""
        return {"n_components": self.n_components, "k": self.k, **self.train_options}

    def set_params(self, **params: Any) -> "DictionaryLearning":
        """Sets constructor arguments; returns self."""
        for key, value in params.items():
            if key in ("n_components", "k"):
                setattr(self, key, value)
            else:
                self.train_options[key] = value
        return self

    def fit(self, X: Data, y: Any = None) -> "DictionaryLearning":
        """Trains on `X`; returns self."""
        options = {"progress": False, **self.train_options}
        self.dictionary_ = train(X, self.n_components, self.k, **options)
        self.components_ = self.dictionary_.atoms
        self.mean_ = self.dictionary_.mean
        self.n_features_in_ = self.components_.shape[1]
        return self

    def transform(self, X: Array, sparse: bool = False) -> Any:
        """Codes of `X`: dense [N, n_components] float32, or ``(indices, values)``."""
        device = {key: self.train_options.get(key) for key in ("adapter", "backend")}
        indices, values = self._dictionary().encode(X, self.k, **device)
        if sparse:
            return indices, values
        dense = np.zeros((indices.shape[0], self.components_.shape[0]), dtype=np.float32)
        rows = np.repeat(np.arange(indices.shape[0]), indices.shape[1])
        used = indices.ravel() >= 0
        dense[rows[used], indices.ravel()[used]] = values.ravel()[used]
        return dense

    def fit_transform(self, X: Data, y: Any = None, sparse: bool = False) -> Any:
        """`fit` then `transform` (X must be an array)."""
        return self.fit(X).transform(X, sparse=sparse)

    def inverse_transform(self, codes: Any) -> np.ndarray:
        """Rows from dense codes [N, n_components] or ``(indices, values)``."""
        if isinstance(codes, tuple):
            return self._dictionary().decode(*codes)
        codes = np.asarray(codes, dtype=np.float32)
        return codes @ self.components_ + self.mean_

    def _dictionary(self) -> Dictionary:
        if not hasattr(self, "dictionary_"):
            raise InputError("this DictionaryLearning is not fitted yet; call fit first")
        return self.dictionary_
