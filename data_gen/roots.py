"""The project's own tiny roots: pretrained from different random inits on the pretraining mixes.

This is the generalization stage of the built-in model graphs. Each root is a (arch, recipe, seed) triple;
recipes differ in data mix, optimizer, learning rate, warmup, length and augmentation, so roots are unrelated.
Pretraining runs the resumable loop of `data_gen.pretraining` (stop it any time; a rerun continues and ends
bit-identical at the same thread count). A root is built once into a cache folder and reused:

    <cache_dir>/.<name>.build/                           the run in progress (resume state, checkpoints)
    <cache_dir>/<name>/final.safetensors                 final weights (timm names, float32)
    <cache_dir>/<name>/checkpoints/step_<k>.safetensors  weights along pretraining (step 0 = the random init)
    <cache_dir>/<name>/root.json                         recipe, curve, val accuracy, sha256s, threads, versions

root.json is written last: a root folder without it, whose files do not match its hashes, or whose recipe is
not the current one, is rebuilt. Final weights and the checkpoints at `ship_steps` are also shipped in
data_gen/assets/roots/ (<name>.safetensors, <name>.json, <name>/step_<k>.safetensors; regenerate with
`python scripts/make_roots.py --ship`), so a fresh clone needs no pretraining.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.io import atomic_write, read_json, sha256_file, write_json
from common.runinfo import versions
from common.seed import derive_seed

ASSETS = Path(__file__).resolve().parent / "assets" / "roots"
EVAL_EVERY = 500          # steps between validation passes (the curve in root.json)
CHECKPOINT_EVERY = 500    # steps between cached checkpoints
SHIP_FIRST = 500          # shipped checkpoints: step 0, then SHIP_FIRST * 2^k below the last step

# Pretraining recipes: data mix, split sizes, and a `data_gen.pretraining` recipe (seed set per root).
# Length chosen by training evidence (issue 14): 20k-step runs of these recipes gave val acc 0.623 / 0.657 (a),
# 0.874 / 0.866 (b) and 0.602 (c, the same seed as vit_c1), and a 10k-step run of recipe a 0.598, so 10k steps
# sit within 0.03 of a run twice as long at half the cost (~35 min per ViT root on one thread).
RECIPES: dict[str, dict[str, Any]] = {
    "a": {"data": "pretrain/mix_a", "n_train": 48000, "n_val": 2400,
          "train": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "scheduler": "cosine",
                    "warmup_steps": 200, "augment": ["flip", "crop"], "batch_size": 64, "max_steps": 10_000}},
    "b": {"data": "pretrain/mix_b", "n_train": 48000, "n_val": 2400,
          "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "scheduler": "cosine",
                    "warmup_steps": 500, "augment": ["crop"], "batch_size": 64, "max_steps": 10_000}},
    "c": {"data": "pretrain/mix_b", "n_train": 48000, "n_val": 2400,
          "train": {"optimizer": "adam", "lr": 1.5e-3, "weight_decay": 0.0, "scheduler": "cosine",
                    "warmup_steps": 300, "augment": ["flip"], "batch_size": 64, "max_steps": 10_000}},
}
# vit_a1 at 10k steps reached 0.570, 0.053 below its own 20k-step run (0.623): it misses both the 0.6 floor and the
# "within 0.03 of a run twice as long" clause, so it trains recipe a for 20k steps (~60 min on one thread).
# vit_a2 likewise: 0.5996 at 10k steps (below the floor, 0.074 below the shipped 20k-step run: 0.674).
RECIPES["a_long"] = {**RECIPES["a"], "train": {**RECIPES["a"]["train"], "max_steps": 20_000}}


@dataclass(frozen=True)
class RootSpec:
    """One built-in root: architecture, pretraining recipe, and the seed of its random init and data order."""
    arch: str
    recipe: str
    seed: int


ROOTS: dict[str, RootSpec] = {
    "vit_a1": RootSpec("vit_mini", "a_long", 1),
    "vit_a2": RootSpec("vit_mini", "a_long", 2),
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


def train_recipe(name: str) -> dict[str, Any]:
    """The pretraining recipe of root `name`, its seed included (what root.json records and must match)."""
    s = spec(name)
    return {**RECIPES[s.recipe]["train"], "seed": derive_seed("root", name, s.seed)}


def ship_steps(name: str) -> list[int]:
    """Steps of the checkpoints shipped along pretraining: 0, SHIP_FIRST, 2 SHIP_FIRST, 4 SHIP_FIRST, ... < last."""
    total, out, k = int(train_recipe(name)["max_steps"]), [0], SHIP_FIRST
    while k < total:
        out.append(k)
        k *= 2
    return out


def _intact(record_path: Path, final: Path, checkpoint: Callable[[int], Path], name: str) -> bool:
    """A root record that exists, made by the current recipe, whose final and shipped checkpoints match its hashes."""
    if not (record_path.is_file() and final.is_file()):
        return False
    rec = read_json(record_path)
    if rec.get("recipe") != train_recipe(name) or rec.get("sha256") != sha256_file(final):
        return False
    hashes = rec.get("checkpoints", {})
    return all(checkpoint(int(s)).is_file() and sha256_file(checkpoint(int(s))) == h for s, h in hashes.items())


def _valid(name: str, cache_dir: Path) -> bool:
    folder = Path(cache_dir) / name
    return _intact(folder / "root.json", folder / "final.safetensors",
                   lambda s: folder / "checkpoints" / f"step_{s}.safetensors", name)


def _shipped(name: str) -> Path | None:
    """The shipped final weights of `name`, if present, of the current recipe and matching the shipped hashes."""
    weights = ASSETS / f"{name}.safetensors"
    ok = _intact(ASSETS / f"{name}.json", weights, lambda s: ASSETS / name / f"step_{s}.safetensors", name)
    return weights if ok else None


def build_root(name: str, *, cache_dir: Path, data_dir: str | Path | None = None,
               num_threads: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Pretrain built-in root `name` into cache_dir/<name>/ (skipped when built; resumes a stopped run)."""
    from data_gen.pretraining import plateau_drop, pretrain
    from data_gen.tasks import load_task

    s = spec(name)
    cache_dir = Path(cache_dir)
    folder, build = cache_dir / name, cache_dir / f".{name}.build"
    if _valid(name, cache_dir) and not force:
        return folder
    if force and build.exists():
        shutil.rmtree(build)
    recipe = RECIPES[s.recipe]
    train = train_recipe(name)
    task = load_task(recipe["data"], seed=0, data_dir=data_dir, n_train=recipe["n_train"], n_val=recipe["n_val"])
    res = pretrain(arch=s.arch, task=task, recipe=train, folder=build, checkpoint_every=CHECKPOINT_EVERY,
                   eval_every=EVAL_EVERY, num_threads=num_threads, progress=progress)
    if folder.exists():
        shutil.rmtree(folder)
    build.rename(folder)
    checkpoints = {str(k): sha256_file(folder / "checkpoints" / f"step_{k}.safetensors") for k in ship_steps(name)}
    record = {"name": name, "arch": s.arch, "recipe_name": s.recipe, "seed": s.seed, "recipe": train,
              "data": recipe["data"], "data_seed": 0, "n_train": recipe["n_train"], "n_val": recipe["n_val"],
              "data_version": task.meta.get("version"), "stage": "generalization", "steps": res["steps"],
              "eval_every": EVAL_EVERY, "val_accuracy": res["val_accuracy"], "val_loss": res["val_loss"],
              "final_loss": res["final_loss"], "plateau_drop": plateau_drop(res["curve"]),
              "curve": res["curve"], "sha256": sha256_file(folder / "final.safetensors"),
              "checkpoints": checkpoints, "num_threads": res["num_threads"],
              "train_seconds": round(res["train_seconds"], 2), "resumed_from": res["resumed_from"],
              "versions": versions()}
    write_json(folder / "root.json", record)
    return folder


def shipped_digests() -> dict[str, str]:
    """name -> sha256 of each shipped built-in root's final weights (from its record in data_gen/assets/roots/)."""
    return {name: read_json(ASSETS / f"{name}.json").get("sha256") for name in ROOTS
            if (ASSETS / f"{name}.json").is_file()}


def ensure_root(name: str, *, cache_dir: Path | None, data_dir: str | Path | None = None,
                num_threads: int | None = None) -> Path:
    """Final weights of built-in root `name`: the cache if built, else the shipped copy, else build it now.

    With cache_dir None only the shipped copy is used (FileNotFoundError if it is missing or stale).
    """
    spec(name)
    if cache_dir is not None and _valid(name, Path(cache_dir)):
        return Path(cache_dir) / name / "final.safetensors"
    shipped = _shipped(name)
    if shipped is not None:
        return shipped
    if cache_dir is None:
        raise FileNotFoundError(f"built-in root {name!r} is neither shipped in {ASSETS} (with its current recipe) "
                                f"nor cached: give a cache_dir to build it there (or run scripts/make_roots.py)")
    return build_root(name, cache_dir=cache_dir, data_dir=data_dir, num_threads=num_threads) / "final.safetensors"


def root_record(name: str, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """root.json of built-in root `name`: the cached one if built, else the shipped one (FileNotFoundError)."""
    if cache_dir is not None and _valid(name, Path(cache_dir)):
        return read_json(Path(cache_dir) / name / "root.json")
    if _shipped(name) is None:
        raise FileNotFoundError(f"built-in root {name!r} is neither cached nor shipped in {ASSETS}")
    return read_json(ASSETS / f"{name}.json")


def root_checkpoints(name: str, *, cache_dir: Path | None, data_dir: str | Path | None = None,
                     num_threads: int | None = None) -> list[tuple[int, Path]]:
    """[(step, path), ...] along pretraining: the checkpoints at `ship_steps`, then the final weights.

    Read from the cache when built there, else from the shipped copies, else the root is built now.
    """
    final = ensure_root(name, cache_dir=cache_dir, data_dir=data_dir, num_threads=num_threads)
    folder = final.parent / "checkpoints" if final.name == "final.safetensors" else ASSETS / name
    return [(k, folder / f"step_{k}.safetensors") for k in ship_steps(name)] + [
        (int(train_recipe(name)["max_steps"]), final)]


def ship_root(name: str, *, cache_dir: Path) -> Path:
    """Copy a built root's final weights, shipped checkpoints and record into data_gen/assets/roots/."""
    folder = Path(cache_dir) / name
    if not _valid(name, Path(cache_dir)):
        raise FileNotFoundError(f"{folder}: root {name!r} is not built with its current recipe "
                                f"(run scripts/make_roots.py first)")
    (ASSETS / name).mkdir(parents=True, exist_ok=True)
    for k in ship_steps(name):
        src = folder / "checkpoints" / f"step_{k}.safetensors"
        atomic_write(ASSETS / name / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    atomic_write(ASSETS / f"{name}.safetensors", lambda tmp: shutil.copyfile(folder / "final.safetensors", tmp))
    write_json(ASSETS / f"{name}.json", {**read_json(folder / "root.json"),
                                         "regenerate": "python scripts/make_roots.py --ship"})
    return ASSETS / f"{name}.safetensors"
