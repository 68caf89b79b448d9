"""Where recovery's heavy products run: `recovery.device` (auto | cpu | cuda) and the Gram kernels.

`resolve_device` turns the option into "cpu" or "cuda" (auto: cuda when torch sees a GPU). `Kernel` is what the
distance code calls:
  * numpy (device "cpu", the default on CPU): the centred Gram matrix of the layer in float32 products over column
    blocks of `BLOCK` columns, summed in float64 (twice the speed of float64 products, ~1e-7 relative to
    ||c_i||^2 + ||c_j||^2 per pair); pairs closer than `REL32` of that scale are recomputed in float64
    (recovery.distances.pairwise_sq_dists), so the error stays ~1e-5 of each pair's own squared distance at most.
  * torch (device "cuda", or "cpu" for tests): the same centred Gram in float64 on that device, bit-for-bit the
    method of the float64 reference (`centred_gram`) up to the order of the sums.
The LoRA rank factorizations take the same `Kernel` (recovery.distances: `to_device` / `from_device`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
BLOCK = 1 << 13          # columns per float32 Gram block (one block of 40 models fits in L2)
REL32 = 1e-2             # pairs with d2 < REL32 x (||c_i||^2 + ||c_j||^2) are redone in float64


def resolve_device(value: object) -> str:
    """"cpu" or "cuda" for `recovery.device`; a ConfigError names the option and its allowed values."""
    if value is None:
        value = "auto"
    if not isinstance(value, str) or value.lower() not in DEVICES:
        raise ConfigError(f"recovery.device must be one of {list(DEVICES)}, got {value!r}")
    value = value.lower()
    if value == "cpu" or (value == "auto" and not _torch_may_see_gpu()):
        return "cpu"
    try:
        import torch
        available = bool(torch.cuda.is_available())
    except ImportError:   # torch is a dependency; without it only the numpy path exists
        available = False
    if value == "cuda" and not available:
        raise ConfigError("recovery.device=cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                          "use recovery.device=auto or recovery.device=cpu")
    return "cuda" if available else "cpu"


GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")   # NVIDIA, ROCm, WSL


def gpu_driver_present() -> bool:
    """Whether a GPU driver's device files exist; without them torch cannot see a GPU."""
    return any(os.path.exists(p) for p in GPU_DRIVER_FILES)


def _torch_may_see_gpu() -> bool:
    """False when torch is not imported yet and no GPU driver is present: `auto` then resolves to cpu without
    importing torch (seconds of a short recovery run)."""
    import sys
    return "torch" in sys.modules or gpu_driver_present()


@dataclass(frozen=True)
class Kernel:
    """The products of one recovery run: `backend` "numpy" or "torch", on `device` ("cpu" | "cuda")."""
    backend: str = "numpy"
    device: str = "cpu"

    @classmethod
    def for_device(cls, device: object = "auto") -> "Kernel":
        """numpy on CPU (faster than torch's CPU products here), torch on CUDA."""
        dev = resolve_device(device)
        return cls("torch", "cuda") if dev == "cuda" else cls("numpy", "cpu")

    @property
    def exact(self) -> bool:
        """True when `gram` is the float64 method itself (no float64 refinement of close pairs needed)."""
        return self.backend == "torch"

    def describe(self) -> str:
        """One line for logs and benchmarks."""
        if self.backend == "numpy":
            return "cpu (numpy: float32 Gram blocks summed in float64, close pairs redone in float64)"
        import torch
        name = torch.cuda.get_device_name() if self.device.startswith("cuda") else "cpu"
        return f"{self.device} ({name}; torch float64 Gram)"

    def gram(self, x: np.ndarray) -> np.ndarray:
        """Gram matrix (n, n) float64 of the rows of `x` (n, p) centred on their mean."""
        if self.backend == "torch":
            return _gram_torch(x, self.device)
        if x.dtype != np.float32:
            return centred_gram(x)
        with np.errstate(over="ignore", invalid="ignore"):
            g = _gram32(x)
        return g if np.isfinite(g).all() else centred_gram(x)   # weights near float32's range: products in float64


class BlasThreads:
    """BLAS threads for the Gram products, with one core left over while a side thread is busy.

    OpenBLAS threads spin while they wait for work, and the side thread's moments call BLAS too: with as many BLAS
    threads as cores beside a busy side thread, the float32 Gram of a ViT-B MLP stack of 105 models took 1.54 s
    instead of 0.38 s (2 cores), and a cold l2 analysis of 40 ViT-B-sized models 17.8-19.8 s instead of 11.0-11.5 s
    with this limit (results/runtime/bench_recovery.md). The count the process started with (OMP_NUM_THREADS, or the
    cores) is the most it uses; it is never raised.
    """

    def __init__(self):
        from threadpoolctl import ThreadpoolController

        self._blas = ThreadpoolController().select(user_api="blas")
        self.most = max((lib["num_threads"] for lib in self._blas.info()), default=1)

    def beside_side_work(self, busy: bool):
        """Context: `most` - 1 BLAS threads (at least 1) when a side thread is busy, else no change."""
        if not busy or self.most <= 1:
            return contextlib.nullcontext()
        return self._blas.limit(limits=self.most - 1)


def centred_gram(x: np.ndarray, chunk: int = BLOCK) -> np.ndarray:
    """Gram matrix of the rows of `x` centred on their mean, in float64, one column chunk at a time (the reference)."""
    g = np.zeros((x.shape[0], x.shape[0]))
    for s in range(0, x.shape[1], chunk):
        c = x[:, s:s + chunk].astype(np.float64)
        c -= c.mean(axis=0)
        g += c @ c.T
    return g


def _gram32(x: np.ndarray, chunk: int = BLOCK) -> np.ndarray:
    """Centred Gram from float32 products of `chunk`-column blocks, accumulated in float64.

    The rows are centred on their float32 column mean (any common shift leaves the distances unchanged; the
    centred values are rounded to ~eps32 of themselves, i.e. of the differences, not of the weights).
    """
    n, p = x.shape
    g = np.zeros((n, n))
    buf = np.empty((n, min(chunk, p)), dtype=np.float32)
    w = np.full(n, 1.0 / n, dtype=np.float32)
    for s in range(0, p, chunk):
        e = min(s + chunk, p)
        c = buf[:, :e - s]
        np.subtract(x[:, s:e], w @ x[:, s:e], out=c)   # the column mean as a BLAS product (faster than a reduce)
        g += c @ c.T
    return g


def _gram_torch(x: np.ndarray, device: str, chunk: int = 1 << 16) -> np.ndarray:
    """Float64 centred Gram on a torch device, column chunk by chunk."""
    import torch

    t = torch.from_numpy(x)   # strided views are fine
    g = torch.zeros((x.shape[0], x.shape[0]), dtype=torch.float64, device=device)
    for s in range(0, x.shape[1], chunk):
        c = t[:, s:s + chunk].to(device=device, dtype=torch.float64)
        c -= c.mean(dim=0)
        g += c @ c.T
    return g.cpu().numpy()


# ------------------------------------------------------------------------------ array namespaces for the rank code
class _NumpyOps:
    """The few array operations the rank factorization (recovery.distances) needs, on numpy arrays."""
    name = "numpy"

    @staticmethod
    def zeros(shape: tuple, like) -> np.ndarray:
        return np.zeros(shape)

    @staticmethod
    def cat(xs: list, axis: int):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def fro(x) -> float:
        return float(np.linalg.norm(x))

    @staticmethod
    def sum_sq(x) -> float:
        """Sum of squares in float64 by numpy's pairwise summation."""
        return float(np.add.reduce(np.square(x, dtype=np.float64).reshape(-1)))

    @staticmethod
    def svd_us(y):
        u, s, _ = np.linalg.svd(y, full_matrices=False)
        return u, s

    @staticmethod
    def qr_q(x):
        return np.linalg.qr(x)[0]

    @staticmethod
    def eigh_desc(g):
        lam, u = np.linalg.eigh(g)
        return lam[::-1], u[:, ::-1]

    @staticmethod
    def randn(rng: np.random.Generator, shape: tuple, single: bool, like):
        return rng.standard_normal(shape, dtype=np.float32) if single else rng.standard_normal(shape)

    @staticmethod
    def f32(x):
        return x.astype(np.float32)

    @staticmethod
    def f64(x):
        return x.astype(np.float64)

    @staticmethod
    def host(x) -> np.ndarray:
        return x

    @staticmethod
    def any(x) -> bool:
        return bool(x.any())


class _TorchOps:
    """The same operations on torch tensors (any device); random matrices come from the same numpy generator."""
    name = "torch"

    @staticmethod
    def zeros(shape: tuple, like):
        import torch
        return torch.zeros(shape, dtype=torch.float64, device=like.device)

    @staticmethod
    def cat(xs: list, axis: int):
        import torch
        return torch.cat(xs, dim=axis)

    @staticmethod
    def fro(x) -> float:
        import torch
        return float(torch.linalg.norm(x))

    @staticmethod
    def sum_sq(x) -> float:
        import torch
        return float(torch.sum(torch.square(x.to(torch.float64))))

    @staticmethod
    def svd_us(y):
        import torch
        u, s, _ = torch.linalg.svd(y, full_matrices=False)
        return u, s

    @staticmethod
    def qr_q(x):
        import torch
        return torch.linalg.qr(x)[0]

    @staticmethod
    def eigh_desc(g):
        import torch
        lam, u = torch.linalg.eigh(g)
        return torch.flip(lam, (0,)), torch.flip(u, (1,))

    @staticmethod
    def randn(rng: np.random.Generator, shape: tuple, single: bool, like):
        import torch
        r = rng.standard_normal(shape, dtype=np.float32) if single else rng.standard_normal(shape)
        return torch.from_numpy(r).to(like.device)

    @staticmethod
    def f32(x):
        import torch
        return x.to(torch.float32)

    @staticmethod
    def f64(x):
        import torch
        return x.to(torch.float64)

    @staticmethod
    def host(x) -> np.ndarray:
        return x.detach().cpu().numpy()

    @staticmethod
    def any(x) -> bool:
        return bool(x.any())


def ops(x) -> type:
    """The operations for `x`: numpy arrays or torch tensors."""
    return _NumpyOps if isinstance(x, np.ndarray) else _TorchOps


def to_device(x: np.ndarray, kernel: "Kernel | None"):
    """`x` as the kernel's array: unchanged for numpy, a float tensor on its device for torch."""
    if kernel is None or kernel.backend == "numpy":
        return x
    import torch
    return torch.from_numpy(np.ascontiguousarray(x)).to(kernel.device)


def _np_sqrt(x):
    return np.sqrt(x)


def _np_max0(x) -> float:
    return float(x.max(initial=0.0))


def _np_take_cols(x, idx: np.ndarray):
    return x[:, idx]


def _t_sqrt(x):
    import torch
    return torch.sqrt(x)


def _t_max0(x) -> float:
    return float(x.max()) if x.numel() else 0.0


def _t_take_cols(x, idx: np.ndarray):
    import torch
    return x[:, torch.as_tensor(idx, device=x.device)]


_NumpyOps.sqrt, _NumpyOps.max0, _NumpyOps.take_cols = map(staticmethod, (_np_sqrt, _np_max0, _np_take_cols))
_TorchOps.sqrt, _TorchOps.max0, _TorchOps.take_cols = map(staticmethod, (_t_sqrt, _t_max0, _t_take_cols))
