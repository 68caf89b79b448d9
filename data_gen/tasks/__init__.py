"""Image classification tasks for fine-tuning: built-in (synthetic), root pretraining mixes, and VTAB.

    load_task("builtin/count", image_size=32, seed=0, data_dir="data")   # no downloads, seconds at most
    load_task("pretrain/mix_a", seed=0)                                   # root pretraining set
    load_task("vtab/clevr_count", image_size=224, data_dir="data")        # needs the prepared tfds dataset
    list_tasks("builtin")  # also "pretrain", "vtab", "vtab10k"

Images are uint8 [N, 3, H, W]; normalisation is the model side's business. With `data_dir`, arrays are cached
as .npz under data_dir/<source>/ and reused (regenerated when the cached file's meta does not match).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.errors import ConfigError
from data_gen.tasks import builtin, pretrain
from data_gen.tasks.store import load_arrays, save_arrays

SOURCES = ("builtin", "pretrain", "vtab", "vtab10k")
DEFAULT_SIZES = {"builtin": (3000, 400), "pretrain": (12000, 1200)}  # (n_train, n_val)


@dataclass
class TaskData:
    """One task's train and val arrays (uint8 images [N, 3, H, W], int64 labels [N]) and provenance."""
    name: str
    num_classes: int
    group: str  # "natural" | "specialized" | "structured" | "pretrain"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    meta: dict = field(default_factory=dict)


def list_tasks(source: str = "builtin") -> list[str]:
    """Full task names of one source: "builtin" | "pretrain" | "vtab" | "vtab10k"."""
    if source == "builtin":
        return [f"builtin/{n}" for n in builtin.GENERATORS]
    if source == "pretrain":
        return [f"pretrain/{n}" for n in pretrain.MIXES]
    if source in ("vtab", "vtab10k"):
        from data_gen.tasks import vtab
        return [f"{source}/{n}" for n in vtab.task_names(source)]
    raise ValueError(f"unknown task source {source!r}; known: {SOURCES}")


def check_task_name(name: str) -> None:
    """A ConfigError unless `name` is a task `load_task` knows (no data is read or generated)."""
    source, _, task = str(name).partition("/")
    if source not in SOURCES or not task:
        raise ConfigError(f"task name {name!r} must look like '<source>/<task>' with source in {SOURCES}")
    known = list_tasks(source)
    if name not in known:
        raise ConfigError(f"unknown task {name!r}; known {source} tasks: {known}")


def load_task(name: str, *, image_size: int = 32, seed: int = 0, data_dir: str | Path | None = None,
              n_train: int | None = None, n_val: int | None = None, allow_download: bool = False) -> TaskData:
    """Load (or generate) task `name` ("<source>/<task>") at `image_size`.

    Args:
        name: e.g. "builtin/count", "pretrain/mix_a", "vtab/clevr_count", "vtab10k/svhn".
        image_size: output height = width.
        seed: generator seed of built-in and pretraining sets (VTAB splits are fixed; the seed is recorded).
        data_dir: cache folder (and, for VTAB, the parent of the prepared tfds data: see `vtab.tfds_dir`).
        n_train, n_val: split sizes of built-in / pretraining sets (defaults in DEFAULT_SIZES).
        allow_download: VTAB only: let tfds download and prepare a missing dataset.
    """
    source, _, task = name.partition("/")
    if source not in SOURCES or not task:
        raise ConfigError(f"task name {name!r} must look like '<source>/<task>' with source in {SOURCES}")
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8, got {image_size}")
    if source in ("vtab", "vtab10k"):
        if n_train is not None or n_val is not None:
            raise ValueError(f"{name}: VTAB split sizes are fixed by the protocol (see data_gen/tasks/vtab.py)")
        from data_gen.tasks import vtab
        return vtab.load(source, task, image_size=image_size, seed=seed, data_dir=data_dir,
                         allow_download=allow_download)
    return _load_synthetic(source, task, image_size, seed, data_dir, n_train, n_val)


def _load_synthetic(source: str, task: str, size: int, seed: int, data_dir: str | Path | None,
                    n_train: int | None, n_val: int | None) -> TaskData:
    """Generate (or read from cache) a built-in task or a pretraining mix."""
    d_train, d_val = DEFAULT_SIZES[source]
    n_train, n_val = d_train if n_train is None else n_train, d_val if n_val is None else n_val
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"{source}/{task}: n_train and n_val must be positive, got {n_train}, {n_val}")
    if source == "builtin":
        if task not in builtin.GENERATORS:
            raise KeyError(f"unknown built-in task {task!r}; known: {sorted(builtin.GENERATORS)}")
        g = builtin.GENERATORS[task]
        k, group, make = g.num_classes, g.group, builtin.generate
        extra = {"description": g.description}
    else:
        k, group, make = pretrain.num_classes(task), "pretrain", pretrain.generate_mix  # KeyError if unknown
        extra = {"components": [{"task": t, "class_offset": o} for t, o in pretrain.mix_classes(task)]}
    meta = {"source": source, "task": task, "seed": seed, "image_size": size, "n_train": n_train, "n_val": n_val,
            "num_classes": k, "version": builtin.VERSION, "labels": "balanced", **extra}
    path = cache_path(data_dir, source, task, seed, size, n_train, n_val) if data_dir is not None else None
    arrays = None
    if path is not None:
        if path.exists():
            cached, cached_meta = load_arrays(path)
            if cached_meta == meta:
                arrays = cached
    if arrays is None:
        x_tr, y_tr = make(task, "train", n_train, size, seed)
        x_va, y_va = make(task, "val", n_val, size, seed)
        arrays = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
        if path is not None:
            save_arrays(path, arrays, meta)
    return _to_task(f"{source}/{task}", k, group, arrays, {**meta, "cache": str(path) if path else None})


def cache_path(data_dir: str | Path, source: str, task: str, seed: int, size: int, n_train: int, n_val: int) -> Path:
    """data_dir/<source>/<task>-<seed>-<size>.npz, with "-<n_train>-<n_val>" appended for non-default sizes."""
    suffix = "" if (n_train, n_val) == DEFAULT_SIZES[source] else f"-{n_train}-{n_val}"
    return Path(data_dir) / source / f"{task}-{seed}-{size}{suffix}.npz"


def _to_task(name: str, num_classes: int, group: str, arrays: dict[str, np.ndarray], meta: dict) -> TaskData:
    """Wrap numpy arrays as a TaskData (uint8 images, int64 labels)."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return TaskData(name=name, num_classes=num_classes, group=group, x_train=t["x_train"],
                    y_train=t["y_train"].long(), x_val=t["x_val"], y_val=t["y_val"].long(), meta=meta)
