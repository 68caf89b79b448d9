"""Task arrays on disk: one .npz per task (no pickles), written atomically, meta as a JSON string."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from common.io import atomic_write

KEYS = ("x_train", "y_train", "x_val", "y_val")


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Atomically write the four task arrays and `meta` (JSON) to `path` (.npz)."""
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **{k: arrays[k] for k in KEYS})
    return atomic_write(path, _write)


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by `save_arrays`; a broken or foreign file raises naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in KEYS}
            meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a task array file ({type(e).__name__}: {e})") from None
    return arrays, meta
