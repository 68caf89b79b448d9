"""The project's own tiny roots: pretrained from different random inits on the pretraining mixes.

This is the generalization stage of the built-in model graphs. Each root is a (arch, recipe, seed) triple;
recipes differ in data mix, optimizer, learning rate, schedule and augmentation, so roots are unrelated.
A root is built once into a cache folder and reused:

    <cache_dir>/<name>/final.safetensors                 final weights (timm names, float32)
    <cache_dir>/<name>/checkpoints/step_<k>.safetensors  weights along pretraining (step 0 = the random init)
    <cache_dir>/<name>/root.json                         spec, recipe, steps, val accuracy, sha256, threads, versions

root.json is written last: a root folder without it (or whose final file does not match its hash) is rebuilt.
Final weights are also shipped in data_gen/assets/roots/<name>.{safetensors,json} (regenerate with
`python scripts/make_roots.py --ship`), so a fresh clone needs no pretraining; the checkpoints along
pretraining are not shipped (`make_roots.py` rebuilds them, bit-identical at the recorded thread count).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from common.io import read_json, sha256_file, write_json
from common.runinfo import versions
from common.seed import derive_seed

ASSETS = Path(__file__).resolve().parent / "assets" / "roots"
STEPS = 600               # optimizer steps of every pretraining recipe (batch 64: ~3.2 epochs of a 12k mix)
CHECKPOINT_EVERY = 50     # steps between kept checkpoints

# Pretraining recipes: data mix (+ optional "n_train"/"n_val" sizes) and a `data_gen.finetune` recipe (seeds
# are set per root).
RECIPES: dict[str, dict[str, Any]] = {
    "a": {"data": "pretrain/mix_a",
          "train": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "scheduler": "cosine",
                    "warmup_steps": 20, "augment": ["flip", "crop"], "batch_size": 64, "epochs": 100,
                    "max_steps": STEPS}},
    "b": {"data": "pretrain/mix_b",
          "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                    "scheduler": "cosine", "warmup_steps": 20, "augment": [], "batch_size": 64, "epochs": 100,
                    "max_steps": STEPS}},
    "c": {"data": "pretrain/mix_b",
          "train": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "constant",
                    "augment": ["crop"], "batch_size": 64, "epochs": 100, "max_steps": STEPS}},
}


@dataclass(frozen=True)
class RootSpec:
    """One built-in root: architecture, pretraining recipe, and the seed of its random init and data order."""
    arch: str
    recipe: str
    seed: int


ROOTS: dict[str, RootSpec] = {
    "vit_a1": RootSpec("vit_mini", "a", 1),
    "vit_a2": RootSpec("vit_mini", "a", 2),
    "vit_b1": RootSpec("vit_mini", "b", 1),
    "vit_b2": RootSpec("vit_mini", "b", 2),
    "vit_c1": RootSpec("vit_mini", "c", 1),
    "resnet_a1": RootSpec("resnet_mini", "a", 1),
}


def spec(name: str) -> RootSpec:
    """The spec of built-in root `name` (KeyError naming the known roots)."""
    if name not in ROOTS:
        raise KeyError(f"unknown built-in root {name!r}; known: {sorted(ROOTS)}")
    return ROOTS[name]


def _valid(folder: Path) -> bool:
    """A finished root folder: root.json present and final.safetensors matching its recorded hash."""
    record, final = folder / "root.json", folder / "final.safetensors"
    if not (record.is_file() and final.is_file()):
        return False
    return read_json(record).get("sha256") == sha256_file(final)


def _shipped(name: str) -> Path | None:
    """The shipped final weights of `name`, if present and matching the shipped record's hash."""
    weights, record = ASSETS / f"{name}.safetensors", ASSETS / f"{name}.json"
    if weights.is_file() and record.is_file() and read_json(record).get("sha256") == sha256_file(weights):
        return weights
    return None


def build_root(name: str, *, cache_dir: Path, data_dir: str | Path | None = None,
               num_threads: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Pretrain built-in root `name` into cache_dir/<name>/ (skipped when already built); returns the folder."""
    from data_gen.finetune import finetune
    from data_gen.tasks import load_task

    s = spec(name)
    folder = Path(cache_dir) / name
    if _valid(folder) and not force:
        return folder
    recipe = RECIPES[s.recipe]
    train = {**recipe["train"], "seed": derive_seed("root", name, s.seed)}
    task = load_task(recipe["data"], seed=0, data_dir=data_dir, n_train=recipe.get("n_train"),
                     n_val=recipe.get("n_val"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=folder.parent))
    try:
        res = finetune(arch=s.arch, init_state=None, task=task, recipe=train, out_dir=build, node_id=name,
                       checkpoint_every=CHECKPOINT_EVERY, num_threads=num_threads, progress=progress)
        if _valid(folder) and not force:  # another process finished this root meanwhile: keep its copy
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        os.replace(build / "models" / f"{name}.safetensors", folder / "final.safetensors")
        os.replace(build / "checkpoints" / name, folder / "checkpoints")
        record = {"name": name, **asdict(s), "data": recipe["data"], "data_seed": 0,
                  "data_version": task.meta.get("version"), "recipe": train,
                  "stage": "generalization", "steps": res["steps"], "checkpoint_every": CHECKPOINT_EVERY,
                  "val_accuracy": res["val_accuracy"], "final_loss": res["final_loss"],
                  "sha256": sha256_file(folder / "final.safetensors"), "num_threads": res["num_threads"],
                  "train_seconds": round(res["train_seconds"], 2), "versions": versions()}
        write_json(folder / "root.json", record)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return folder


def ensure_root(name: str, *, cache_dir: Path | None, data_dir: str | Path | None = None,
                num_threads: int | None = None) -> Path:
    """Final weights of built-in root `name`: the cache if built, else the shipped copy, else build it now.

    With cache_dir None only the shipped copy is used (FileNotFoundError if it is missing).
    """
    spec(name)
    if cache_dir is not None and _valid(Path(cache_dir) / name):
        return Path(cache_dir) / name / "final.safetensors"
    shipped = _shipped(name)
    if shipped is not None:
        return shipped
    if cache_dir is None:
        raise FileNotFoundError(f"built-in root {name!r} is neither shipped in {ASSETS} nor cached: give a "
                                f"cache_dir to build it there (or run scripts/make_roots.py)")
    return build_root(name, cache_dir=cache_dir, data_dir=data_dir, num_threads=num_threads) / "final.safetensors"


def root_checkpoints(name: str, *, cache_dir: Path, data_dir: str | Path | None = None,
                     num_threads: int | None = None) -> list[tuple[int, Path]]:
    """[(step, path), ...] of the weights along pretraining, sorted by step (builds the root if needed)."""
    folder = build_root(name, cache_dir=cache_dir, data_dir=data_dir, num_threads=num_threads)
    paths = (folder / "checkpoints").glob("step_*.safetensors")
    return sorted((int(p.stem.removeprefix("step_")), p) for p in paths)


def ship_root(name: str, *, cache_dir: Path) -> Path:
    """Copy a built root's final weights and record into data_gen/assets/roots/ (atomically)."""
    folder = Path(cache_dir) / name
    if not _valid(folder):
        raise FileNotFoundError(f"{folder}: root {name!r} is not built (run scripts/make_roots.py first)")
    ASSETS.mkdir(parents=True, exist_ok=True)
    from common.io import atomic_write
    atomic_write(ASSETS / f"{name}.safetensors", lambda tmp: shutil.copyfile(folder / "final.safetensors", tmp))
    record = read_json(folder / "root.json")
    write_json(ASSETS / f"{name}.json", {**record, "regenerate": "python scripts/make_roots.py --ship"})
    return ASSETS / f"{name}.safetensors"

