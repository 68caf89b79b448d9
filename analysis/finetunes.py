"""Fine-tunes the analysis experiments train themselves, cached: a model whose weights file exists with the recorded
sha256 and the same spec is never trained again.

- `finetune_run`: one cached fine-tune of a root (or of given weights) on a task, its start saved as step 0;
- `cached_finetune`: `data_gen.finetune.finetune` behind that cache;
- where things are cached (`analysis_cache`, `roots_cache`) and how they are named (`node_name`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.io import jsonable, read_json, sha256_file, write_json

log = logging.getLogger("mother.analysis")
_STEP = re.compile(r"^step_(\d+)\.safetensors$")


def analysis_cache(cfg: Any, sub: str) -> Path:
    """Folder where an analysis experiment keeps the models it trains: ${paths.graphs_dir}/analysis/<sub>."""
    return Path(cfg.paths.graphs_dir) / "analysis" / sub


def roots_cache(cfg: Any) -> Path:
    """Folder of the built-in roots (as data_gen's graph builder uses it): ${paths.graphs_dir}/roots."""
    return Path(cfg.paths.graphs_dir) / "roots"


def node_name(*parts: Any) -> str:
    """A file-safe model id from readable parts ("builtin:vit_a", "builtin/count", 1e-3 -> vit_a__count__0.001)."""
    def clean(p: Any) -> str:
        s = f"{p:g}" if isinstance(p, float) else str(p)
        s = s.split(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".safetensors")
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", s)
    return "__".join(clean(p) for p in parts)


def checkpoint_series(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_<k>.safetensors` in `ckpt_dir`, sorted by step.

    Raises:
        FileNotFoundError: the folder is missing or holds no step files.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint folder not found")
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP.match(p.name))]
    if not found:
        raise FileNotFoundError(f"{ckpt_dir}: no step_<k>.safetensors checkpoints")
    return sorted(found)


def cached_finetune(cache_dir: str | Path, node_id: str, *, spec: Mapping, arch: str, init_state: Any,
                    task: Any, recipe: Mapping, checkpoint_every: int | None = None,
                    num_threads: int | None = None) -> dict[str, Any]:
    """Fine-tune once: reuse `cache_dir/models/<node_id>.safetensors` when its record matches.

    The record `cache_dir/records/<node_id>.json` holds `spec` (what defines the model: root, task, recipe ...),
    finetune's result and the weights' sha256. A model is reused when the record's spec equals `spec`, the
    weights file hashes to the recorded sha256 and every recorded checkpoint exists; otherwise it is trained
    (again, with a warning when a stale record is replaced). `init_state` and `task` may be callables, so
    nothing is loaded for a cached model.

    Returns:
        finetune's result dict plus "node_id", "spec", "checkpoints" (list of [step, path]), "num_classes" of
        the task and "cached".
    """
    cache_dir = Path(cache_dir)
    spec = jsonable(spec)
    rec_path = cache_dir / "records" / f"{node_id}.json"
    if rec_path.exists():
        rec = read_json(rec_path)
        weights = Path(rec.get("weights", ""))
        ok = (rec.get("spec") == spec and weights.is_file() and sha256_file(weights) == rec.get("sha256")
              and all(Path(p).is_file() for _, p in rec.get("checkpoints", [])))
        if ok:
            return {**rec, "cached": True}
        log.warning("%s: cached model %s is stale (spec, hash or checkpoints differ); training it again",
                    rec_path, node_id)
    from data_gen.finetune import finetune

    task = task() if callable(task) else task
    out = finetune(arch=arch, init_state=init_state() if callable(init_state) else init_state,
                   task=task, recipe=dict(jsonable(recipe)), out_dir=cache_dir,
                   node_id=node_id, checkpoint_every=checkpoint_every, num_threads=num_threads, progress=False)
    ckpts = []
    if checkpoint_every:
        ckpts = [[s, str(p)] for s, p in checkpoint_series(cache_dir / "checkpoints" / node_id)]
    rec = {**jsonable(out), "node_id": node_id, "spec": spec, "checkpoints": ckpts,
           "num_classes": int(task.num_classes)}
    write_json(rec_path, rec)
    return {**rec, "cached": False}


def load_root_state(cfg: Any, root: str) -> tuple[str, dict]:
    """(arch, state dict) of a root spec, built-in roots cached under `roots_cache(cfg)`."""
    from data_gen.sources import load_root

    return load_root(root, cache_dir=roots_cache(cfg), data_dir=cfg.paths.data_dir,
                     num_threads=cfg.get("num_threads"))


def root_fingerprint(cfg: Any, root: str) -> str:
    """What identifies a root's weights in a cache key: a built-in root's or local file's sha256, else its name
    (hub checkpoints are immutable by name)."""
    if root.startswith("builtin:"):
        from data_gen.roots import ensure_root

        return sha256_file(ensure_root(root.removeprefix("builtin:"), cache_dir=roots_cache(cfg),
                                       data_dir=cfg.paths.data_dir, num_threads=cfg.get("num_threads")))
    if Path(root).is_file():
        return sha256_file(root)
    return root


def state_fingerprint(state: Mapping) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (key order independent)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous() if hasattr(state[k], "detach") else state[k]
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.numpy().tobytes() if hasattr(v, "numpy") else bytes(memoryview(v)))
    return h.hexdigest()


def save_state(path: str | Path, state: Mapping, arch: str) -> Path:
    """Write a state dict as float32 safetensors (atomic), unless `path` already exists."""
    from safetensors.torch import save_file

    from common.io import atomic_write

    path = Path(path)
    if not path.is_file():
        plain = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"arch": arch}))
    return path


def load_task_data(cfg: Any, name: str, **options: Any) -> Any:
    """`data_gen.tasks.load_task(name, data_dir=cfg.paths.data_dir, **options)` for the analysis experiments (VTAB
    tasks import TensorFlow after torch themselves: `data_gen.tasks.vtab.import_tfds`)."""
    from data_gen.tasks import load_task

    return load_task(name, data_dir=str(cfg.paths.data_dir), **options)


def finetune_run(cfg: Any, cache: Path, *, root: str, task: str, recipe: Mapping, image_size: int,
                 data_seed: int, checkpoint_every: int | None, node_id: str | None = None,
                 init: tuple[str, Mapping] | None = None, init_name: str | None = None) -> dict[str, Any]:
    """One cached fine-tune of `root` (or of `init` = (arch, state), named `init_name`) on `task`.

    The root's own weights are saved once as `cache/roots/<name>.safetensors`, so a trajectory starts at step 0
    with the weights the fine-tune started from. The default node id is readable (parent, task, lr, seed) and
    ends with a hash of the whole spec, so runs with different recipes never overwrite each other.
    Returns cached_finetune's record plus "init_file" and "arch".
    """
    import hashlib
    import json

    parent = init_name or node_name(root)
    spec = {"parent": parent, "root": root, "task": task, "image_size": image_size, "data_seed": data_seed,
            "recipe": jsonable(recipe), "checkpoint_every": checkpoint_every}
    # a rebuilt root (or a changed given init) invalidates what was trained from it
    spec["init_sha256"] = root_fingerprint(cfg, root) if init is None else state_fingerprint(init[1])
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    node_id = node_id or node_name(parent, task, recipe.get("lr"), f"s{recipe.get('seed')}", digest)
    init_file = cache / "roots" / f"{parent}.safetensors"
    loaded: dict[str, Any] = {}

    def get_init() -> tuple[str, Mapping]:
        if "init" not in loaded:
            loaded["init"] = init if init is not None else load_root_state(cfg, root)
        return loaded["init"]

    if not init_file.is_file():
        arch, state = get_init()
        save_state(init_file, state, arch)
    from safetensors import safe_open

    with safe_open(str(init_file), framework="pt") as f:
        arch = (f.metadata() or {}).get("arch") or get_init()[0]
    rec = cached_finetune(cache, node_id, spec=spec, arch=arch, init_state=lambda: get_init()[1],
                          task=lambda: load_task_data(cfg, task, image_size=image_size, seed=data_seed),
                          recipe=recipe, checkpoint_every=checkpoint_every, num_threads=cfg.get("num_threads"))
    if not rec.get("cached") and "init" in loaded:
        # trained just now: the saved start must be the weights it trained from (a built-in root can be rebuilt)
        init_file.unlink(missing_ok=True)
        save_state(init_file, loaded["init"][1], loaded["init"][0])
    return {**rec, "init_file": str(init_file), "arch": arch}
