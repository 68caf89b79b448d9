"""Seeds: one master seed per run; every other seed is derived from it and a name."""
from __future__ import annotations

import hashlib
import random
import sys

import numpy as np


def derive_seed(*parts: object) -> int:
    """Deterministic 31-bit seed from any parts (e.g. experiment seed and node id); stable across runs."""
    key = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int, with_torch: bool = True) -> None:
    """Seed python, numpy and torch (`with_torch=False`: torch only if something imported it already)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if not with_torch and "torch" not in sys.modules:
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
