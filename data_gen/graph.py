"""Build a model graph folder: `graph.json`, `models/<id>.safetensors` and one record per node.

Layout of `<graphs_dir>/<name>/`::

    graph.json              nodes, edges, stage, meta per node, config, seed, thread count, versions
    models/<id>.safetensors weights (roots copied from their source, the rest written by finetune)
    nodes/<id>.json         {"job": <the node's job>, "meta": <its meta>}: the record a rerun checks
    adapters/<id>/          LoRA adapters (finetune)

Devices: `data_gen.accelerator` / `devices` / `precision` reach each fine-tune's Lightning Trainer and are recorded,
resolved, in its meta (weights are float32 either way). When the build trains on GPUs, each local worker process is
pinned to its own GPU (CUDA_VISIBLE_DEVICES, set before CUDA starts in it) and `workers=auto` is one worker per
visible GPU; on CPU it is usable cores // num_threads (data_gen.workers).

A node's job (data_gen.spec) plus its parent's weights file fully determine it, so `build_node` can run as
one SLURM array task per node of a level; `build_graph` runs the levels in order and rewrites graph.json
after every node. A node counts as done when its record holds the same job, its weights file still hashes
to the recorded sha256, and it was trained from the parent's current weights (recorded parent sha256).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError
from common.io import read_json, sha256_file, write_json
from common.runinfo import versions
from data_gen.spec import active_methods, build_spec
from data_gen.workers import gpu_slots, kill_workers, node_pool, resolve_workers, sigterm_exits, visible_gpus

log = logging.getLogger("mother.data_gen")
# Recipe keys every node's meta holds (null where they do not apply: roots, LoRA keys of full fine-tunes).
RECIPE_META = ("method", "lora_rank", "lora_alpha", "lr", "epochs", "batch_size", "seed")
# How each fine-tune ran (resolved Lightning options and what it measured); null for roots.
TRAINER_META = ("accelerator", "devices", "precision", "train_seconds", "step_seconds", "device_name",
                "gpu_memory_peak_mb")
# data_gen config keys passed to every fine-tune's Trainer, and their defaults.
TRAINER_KEYS = {"accelerator": "auto", "devices": 1, "precision": "auto"}


def weights_path(graph_dir: Path, node_id: str) -> Path:
    """models/<id>.safetensors of a graph folder."""
    return Path(graph_dir) / "models" / f"{node_id}.safetensors"


def record_path(graph_dir: Path, node_id: str) -> Path:
    """nodes/<id>.json of a graph folder."""
    return Path(graph_dir) / "nodes" / f"{node_id}.json"


def read_record(graph_dir: Path, node_id: str) -> dict | None:
    """The node's record, or None when it has none (a broken record counts as none, with a warning)."""
    path = record_path(graph_dir, node_id)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as e:
        log.warning("ignoring unreadable node record: %s", e)
        return None


def is_done(graph_dir: Path, job: Mapping, parent_sha256: str | None) -> bool:
    """True when the node's record matches `job`, its weights hash as recorded and its parent is unchanged."""
    rec = read_record(graph_dir, job["id"])
    if rec is None or rec.get("job") != _plain(job):
        return False
    meta = rec.get("meta", {})
    if job["parent"] is not None and meta.get("parent_sha256") != parent_sha256:
        return False
    path = weights_path(graph_dir, job["id"])
    if not path.is_file():
        return False
    if sha256_file(path) != meta.get("sha256"):
        log.warning("%s: sha256 differs from the recorded one (modified or corrupted); rebuilding", path)
        return False
    if meta.get("adapter") and not (Path(graph_dir) / "adapters" / job["id"]).is_dir():
        log.warning("%s: the node's LoRA adapter folder is missing; rebuilding",
                    Path(graph_dir) / "adapters" / job["id"])
        return False
    return True


def check_jobs(jobs: list[Mapping], *, tasks: bool = True, roots: bool = True) -> None:
    """ConfigErrors found before anything is built, for every job the graph plans: each fine-tune's drawn recipe
    (data_gen.finetune.resolve_recipe), split sizes and (`tasks`) task name, and (`roots`) each root's source."""
    from data_gen.finetune import check_lora_fits, resolve_recipe
    from data_gen.sources import check_root_source, root_arch
    from data_gen.tasks import check_task_name

    archs = {}
    for job in jobs:
        if job["parent"] is None:
            if roots:
                check_root_source(job["recipe"]["source"])
                archs[job["id"]] = root_arch(job["recipe"]["source"], job["recipe"].get("arch"))
            continue
        method = job["recipe"].get("method")
        try:
            recipe = resolve_recipe({k: v for k, v in job["recipe"].items() if k != "source"})
            if tasks:
                check_task_name(job["task"])
            if method == "lora" and archs.get(job["root"]):   # rank vs width on the root's architecture
                check_lora_fits(archs[job["root"]], recipe["lora_targets"], recipe["lora_rank"])
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"node {job['id']} (data_gen.methods.{method}): {e}") from None
        for key in ("n_train", "n_val"):
            if job.get("data", {}).get(key) is not None and int(job["data"][key]) < 1:
                raise ConfigError(f"data_gen.methods.{method}.{key} must be >= 1, got {job['data'][key]}")


def remove_partial_writes(graph_dir: Path) -> None:
    """Delete what writes a killed build left half done: common.io.atomic_write's temp files of graph.json, node
    records and weights (`.<name>.*.tmp`) and the finetune adapters' temp folders (`adapters/.<id>.*`). Never read
    as results, they would stay forever; only a build of this graph writes these names."""
    graph_dir = Path(graph_dir)
    leftovers = [*graph_dir.glob(".graph.json.*.tmp"), *(graph_dir / "models").glob(".*.safetensors.*.tmp"),
                 *(graph_dir / "nodes").glob(".*.json.*.tmp"), *(graph_dir / "adapters").glob(".*")]
    for f in leftovers:
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    if leftovers:
        log.info("%s: removed %d partial write(s) of an interrupted build, e.g. %s", graph_dir, len(leftovers),
                 leftovers[0].name)


def survey(graph_dir: Path, jobs: list[Mapping], threads: int, force: bool) -> None:
    """Before a build into an existing folder: a ConfigError when its finished nodes were trained at another
    thread count (weights are bit-identical only at one, so a graph is built at one), and one warning each for
    nodes whose record holds another job (a changed config: they are retrained) and for nodes the config no
    longer plans (left in the folder, not in graph.json)."""
    folder = Path(graph_dir) / "nodes"
    if not folder.is_dir():
        return
    planned = {job["id"]: job for job in jobs}
    held = sorted(p.stem for p in folder.glob("*.json"))
    other_threads, changed = {}, []
    for node in (n for n in held if n in planned):
        rec = read_record(graph_dir, node) or {}
        if rec.get("job") != _plain(planned[node]):
            changed.append(node)
        elif planned[node]["parent"] is not None and rec.get("meta", {}).get("num_threads") not in (None, threads):
            other_threads[node] = rec["meta"]["num_threads"]
    if other_threads and not force:
        counts = sorted(set(other_threads.values()))
        raise ConfigError(f"{graph_dir}: {len(other_threads)} built node(s) were trained with num_threads={counts} "
                          f"(e.g. {next(iter(other_threads))}), this run asks num_threads={threads}; weights are "
                          f"bit-identical only at one thread count, so a graph is built at one: rerun with "
                          f"num_threads={counts[0]} to resume or reuse it, data_gen.force=true to retrain every node, "
                          f"or another data_gen.name")
    if changed:
        log.warning("%s: %d node(s) were built from another config (e.g. %s: its task, recipe, seed or parent "
                    "changed); retraining them", graph_dir, len(changed), changed[:3])
    orphans = [n for n in held if n not in planned]
    if orphans:
        log.warning("%s: %d node(s) the config no longer plans (e.g. %s) stay in the folder, left out of graph.json; "
                    "delete them or build into another data_gen.name", graph_dir, len(orphans), orphans[:3])


def _plain(obj: Any) -> Any:
    """JSON round trip, so jobs compare equal to what a record read back holds."""
    return json.loads(json.dumps(obj))


def _default_load_root(root: str | Mapping, **kwargs: Any) -> tuple[str, dict[str, torch.Tensor]]:
    source = str(root["root"] if isinstance(root, Mapping) else root)
    if source.startswith("random:"):  # a smoke run's stand-in for a hub root (data_gen.smoke)
        from data_gen.smoke import random_root
        return random_root(source)
    from data_gen.sources import load_root
    return load_root(root, **kwargs)


def _default_finetune(**kwargs: Any) -> dict:
    from data_gen.finetune import finetune
    return finetune(**kwargs)


def _default_load_task(name: str, mock: int | None = None, **kwargs: Any):
    """`data_gen.tasks.load_task`; `mock` (smoke runs): VTAB from tfds' mock data, that many examples a split."""
    from data_gen.tasks import load_task  # TensorFlow, when a VTAB task needs it, loads after torch (import_tfds)
    if mock:
        from data_gen.smoke import mock_vtab
        with mock_vtab(int(mock)):
            return load_task(name, **{**kwargs, "data_dir": None})  # data_dir None: never cache mock arrays
    return load_task(name, **kwargs)


def _build_root(graph_dir: Path, job: Mapping, *, cache_dir: Path | None, data_dir: str | Path | None,
                num_threads: int | None, load_root_fn: Callable) -> dict:
    from data_gen.models import save_weights

    start = time.perf_counter()
    recipe = job["recipe"]
    root = {"root": recipe["source"], "arch": recipe["arch"]} if recipe.get("arch") else recipe["source"]
    arch, state = load_root_fn(root, cache_dir=cache_dir, data_dir=data_dir, num_threads=num_threads)
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = weights_path(graph_dir, job["id"])
    save_weights(path, state, {"arch": arch, "node_id": job["id"], "source": recipe["source"]})
    return {"arch": arch, "source": job["recipe"]["source"], "method": "pretrained", "val_accuracy": None,
            "steps": None, "seconds": time.perf_counter() - start, "adapter": None}


def _build_child(graph_dir: Path, job: Mapping, *, data_dir: str | Path | None, num_threads: int | None,
                 logger_cfg: Mapping | None, checkpoint_every: int | None, progress: bool,
                 trainer: Mapping[str, Any] | None, finetune_fn: Callable, load_task_fn: Callable) -> dict:
    from safetensors.torch import load_file

    root_rec = read_record(graph_dir, job["root"])
    if root_rec is None:
        raise FileNotFoundError(f"{record_path(graph_dir, job['root'])}: root {job['root']!r} of {job['id']!r} "
                                "is not built yet (build level 0 first)")
    arch = root_rec["meta"]["arch"]
    parent_file = weights_path(graph_dir, job["parent"])
    if not parent_file.is_file():
        raise FileNotFoundError(f"{parent_file}: parent {job['parent']!r} of {job['id']!r} is not built yet")
    init_state = load_file(parent_file)
    task = load_task_fn(job["task"], data_dir=str(data_dir) if data_dir else None, **job["data"])
    res = finetune_fn(arch=arch, init_state=init_state, task=task, recipe=dict(job["recipe"]),
                      out_dir=Path(graph_dir), node_id=job["id"], logger_cfg=logger_cfg,
                      checkpoint_every=checkpoint_every, num_threads=num_threads, progress=progress,
                      **{**TRAINER_KEYS, **(trainer or {})})
    adapter = res.get("adapter")
    return {"arch": arch, "val_accuracy": float(res["val_accuracy"]), "steps": res.get("steps"),
            "seconds": res.get("seconds"), **{k: res.get(k) for k in TRAINER_META},
            "num_classes": getattr(task, "num_classes", None),
            "adapter": os.path.relpath(adapter, graph_dir) if adapter else None,
            "claimed_sha256": res.get("sha256")}


def build_node(graph_dir: str | Path, job: Mapping, *, cache_dir: str | Path | None = None,
               data_dir: str | Path | None = None, num_threads: int | None = None,
               logger_cfg: Mapping | None = None, checkpoint_every: int | None = None, progress: bool = False,
               trainer: Mapping[str, Any] | None = None, finetune_fn: Callable | None = None,
               load_root_fn: Callable | None = None, load_task_fn: Callable | None = None) -> dict:
    """Build one node (unconditionally): weights into models/, record into nodes/<id>.json; return its meta.

    A root is loaded from its source and copied; any other node is fine-tuned from its parent's weights
    file, which must exist. Usable as one SLURM array task; `build_graph` decides what to skip.

    Args:
        graph_dir: the graph folder.
        job: one entry of `data_gen.spec.build_spec`.
        trainer: {"accelerator", "devices", "precision"} for the fine-tune (`TRAINER_KEYS`; resolved here, on the
            machine that trains, and recorded resolved in the node's meta).
        finetune_fn / load_root_fn / load_task_fn: replacements for data_gen's own (tests inject faults).
    """
    graph_dir = Path(graph_dir)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if job["parent"] is None:
        info = _build_root(graph_dir, job, cache_dir=Path(cache_dir) if cache_dir else graph_dir.parent / "roots",
                           data_dir=data_dir, num_threads=num_threads,
                           load_root_fn=load_root_fn or _default_load_root)
        parent_sha = None
    else:
        parent_rec = read_record(graph_dir, job["parent"])
        parent_sha = parent_rec["meta"]["sha256"] if parent_rec else None
        info = _build_child(graph_dir, job, data_dir=data_dir, num_threads=num_threads, logger_cfg=logger_cfg,
                            checkpoint_every=checkpoint_every, progress=progress, trainer=trainer,
                            finetune_fn=finetune_fn or _default_finetune,
                            load_task_fn=load_task_fn or _default_load_task)
    sha = sha256_file(weights_path(graph_dir, job["id"]))
    claimed = info.pop("claimed_sha256", None)
    if claimed and claimed != sha:
        raise RuntimeError(f"{weights_path(graph_dir, job['id'])}: finetune reported sha256 {claimed}, "
                           f"file has {sha} (written twice?)")
    recipe = {**dict.fromkeys(RECIPE_META + TRAINER_META),
              **{k: v for k, v in job["recipe"].items() if k != "source"}}
    meta = {**recipe, "task": job["task"], "parent": job["parent"], "root": job["root"], "level": job["level"],
            **info, "sha256": sha, "parent_sha256": parent_sha, "weights": f"models/{job['id']}.safetensors",
            "dtype": "float32", "num_threads": torch.get_num_threads(), **{f"data_{k}": v for k, v in
                                                                          job.get("data", {}).items()}}
    meta = _plain(meta)
    write_json(record_path(graph_dir, job["id"]), {"job": _plain(job), "meta": meta})
    return meta


def write_graph(graph_dir: str | Path, jobs: list[Mapping], extra: Mapping[str, Any],
                records: Mapping[str, dict] | None = None) -> dict:
    """Assemble graph.json from the node records of `jobs` (finished nodes only) and write it atomically.

    Args:
        records: node id -> verified record (a job without one is pending); None: read them from nodes/.
    """
    graph_dir = Path(graph_dir)
    nodes, edges, stage, meta, pending = [], [], {}, {}, []
    for job in jobs:
        rec = records.get(job["id"]) if records is not None else read_record(graph_dir, job["id"])
        if rec is None or rec.get("job") != _plain(job):
            pending.append(job["id"])
            continue
        nodes.append(job["id"])
        stage[job["id"]] = "generalization" if job["parent"] is None else "specialization"
        meta[job["id"]] = rec["meta"]
        if job["parent"] is not None:
            edges.append([job["parent"], job["id"]])
    graph = {"nodes": nodes, "edges": edges, "stage": stage, "meta": meta,
             "complete": not pending, "pending": pending, **extra}
    write_json(graph_dir / "graph.json", graph)
    return graph


def graph_config(cfg: DictConfig) -> dict:
    """The resolved `data_gen` config as a plain dict, its `methods` the blocks in use with the keys they set
    (`data_gen.spec.active_methods`); with `smoke=true`, the smoke run's config (`data_gen.smoke.smoke_config`: its
    own folder, a small tree, random-init stand-ins for hub roots)."""
    dg = OmegaConf.to_container(cfg.data_gen, resolve=True)
    dg["methods"] = active_methods(dg)
    if cfg.get("smoke"):
        from data_gen.smoke import smoke_config
        dg = smoke_config(dg)
    return dg


def trainer_options(dg: Mapping) -> dict[str, Any]:
    """The Trainer options of a `data_gen` config (`TRAINER_KEYS`, defaults filled in), unresolved."""
    return {k: default if dg.get(k) is None else dg[k] for k, default in TRAINER_KEYS.items()}


def build_gpus(dg: Mapping) -> list[str]:
    """The GPUs a local build trains on: the visible ones unless `accelerator` is cpu (or mps)."""
    accelerator = str(trainer_options(dg)["accelerator"]).lower()
    if accelerator in ("cpu", "mps"):
        return []
    gpus = visible_gpus()
    if not gpus and accelerator in ("gpu", "cuda"):
        raise ValueError("data_gen.accelerator=gpu, but torch sees no CUDA GPU here; use accelerator=auto or cpu")
    return gpus


def _root_unchanged(graph_dir: Path, job: Mapping, *, cache_dir: str | Path | None, data_dir: str | Path | None,
                    num_threads: int | None, load_root_fn: Callable | None) -> bool:
    """True when the root's source still gives the weights the graph holds.

    A root's job names its source (e.g. builtin:vit_a1), not its bytes: when the source is rebuilt or
    replaced, the graph's copy is stale and so is every node below it. Loading a root is cheap (a copy), so it
    is re-materialised and hashed; an unreachable source (offline hub) keeps the verified copy, with a warning.
    """
    from data_gen.sources import RootUnavailableError

    recorded = (read_record(graph_dir, job["id"]) or {}).get("meta", {}).get("sha256")
    with tempfile.TemporaryDirectory(dir=graph_dir) as tmp:
        try:
            _build_root(Path(tmp), job, cache_dir=Path(cache_dir) if cache_dir else graph_dir.parent / "roots",
                        data_dir=data_dir, num_threads=num_threads,
                        load_root_fn=load_root_fn or _default_load_root)
        except RootUnavailableError as e:
            log.warning("root %s: source unreachable (%s); keeping the verified copy in the graph", job["id"], e)
            return True
        current = sha256_file(weights_path(Path(tmp), job["id"]))
    if current != recorded:
        log.warning("root %s: its source %s changed since the graph was built; rebuilding the root and every "
                    "node below it", job["id"], job["recipe"].get("source"))
    return current == recorded


def stale_roots(cfg: DictConfig, *, load_root_fn: Callable | None = None) -> list[str]:
    """Ids of the roots of `cfg.data_gen` whose source no longer gives the weights the built graph holds (a
    rebuilt built-in root): their trees are stale, and `build_graph` rebuilds them. Cheap: roots are copies."""
    dg = graph_config(cfg)
    graph_dir = Path(dg["dir"])
    threads = int(dg.get("num_threads") or torch.get_num_threads())
    return [job["id"] for job in build_spec(dg, int(dg.get("seed", cfg.seed))) if job["parent"] is None
            and not _root_unchanged(graph_dir, job, cache_dir=dg.get("cache_dir"), data_dir=dg.get("data_dir"),
                                    num_threads=threads, load_root_fn=load_root_fn)]


def changed_jobs(cfg: DictConfig) -> list[str]:
    """Ids of the nodes `cfg.data_gen` plans now whose record holds another job (a changed recipe, task list or
    tree shape; a missing record counts as changed), plus nodes the graph holds that the config no longer plans.
    Cheap (records only, no hashing); `build_graph` retrains the changed nodes and every node below them."""
    dg = graph_config(cfg)
    graph_dir = Path(dg["dir"])
    jobs = build_spec(dg, int(dg.get("seed", cfg.seed)))
    changed = [job["id"] for job in jobs if (read_record(graph_dir, job["id"]) or {}).get("job") != _plain(job)]
    graph_file = graph_dir / "graph.json"
    held = read_json(graph_file).get("nodes", []) if graph_file.is_file() else []
    planned = {job["id"] for job in jobs}
    return changed + [n for n in held if n not in planned]


def build_graph(cfg: DictConfig, *, progress: bool | None = None, finetune_fn: Callable | None = None,
                load_root_fn: Callable | None = None, load_task_fn: Callable | None = None) -> dict:
    """Build (or finish) the graph `cfg.data_gen` describes, level by level; return a summary.

    Finished nodes are skipped (see `is_done`) unless `data_gen.force` is true. Torch threads are pinned to
    `data_gen.num_threads` (default: the current count) and recorded: equal weights need an equal count.
    """
    dg = graph_config(cfg)
    seed = int(dg.get("seed", cfg.seed))
    graph_dir = Path(dg["dir"])
    threads = int(dg.get("num_threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    jobs = build_spec(dg, seed)
    check_jobs(jobs, tasks=load_task_fn is None, roots=load_root_fn is None)
    survey(graph_dir, jobs, threads, bool(dg.get("force")))
    remove_partial_writes(graph_dir)
    show = dg.get("progress", True) if progress is None else progress
    extra = {"name": dg["name"], "seed": seed, "num_threads": threads, "config": dg, "versions": versions()}
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None
    doubles = any(f is not None for f in (finetune_fn, load_root_fn, load_task_fn))  # test doubles: this process only
    load_task_fn = functools.lru_cache(maxsize=4)(load_task_fn or _default_load_task)
    built, skipped, accs, records = [], [], [], {}
    start = time.perf_counter()
    from tqdm.auto import tqdm

    gpus = build_gpus(dg)
    workers = resolve_workers(dg.get("workers", 1), threads, gpus)
    if gpus and workers > len(gpus):
        log.warning("%d workers share %d GPU(s) %s: %s", workers, len(gpus), gpus, gpu_slots(workers, gpus))
    node_kwargs = dict(cache_dir=dg.get("cache_dir"), data_dir=dg.get("data_dir"), num_threads=threads,
                       logger_cfg=logger_cfg, checkpoint_every=dg.get("checkpoint_every"), progress=False,
                       trainer=trainer_options(dg))
    injected = dict(finetune_fn=finetune_fn, load_root_fn=load_root_fn, load_task_fn=load_task_fn)
    if doubles:
        workers = 1
    bar = tqdm(total=len(jobs), desc=f"graph {dg['name']}", unit="node", disable=not show)
    before = {p.pid for p in multiprocessing.active_children()}
    pool = node_pool(workers, threads, gpu_slots(workers, gpus)) if workers > 1 else None
    stack = contextlib.ExitStack()
    if pool is not None:
        stack.enter_context(sigterm_exits())
    interrupted = False
    try:
        for level in sorted({j["level"] for j in jobs}):
            todo = []
            for job in (j for j in jobs if j["level"] == level):
                parent_sha = records[job["parent"]]["meta"]["sha256"] if job["parent"] else None
                done = not dg.get("force") and is_done(graph_dir, job, parent_sha)
                if done and job["parent"] is None:
                    done = _root_unchanged(graph_dir, job, cache_dir=dg.get("cache_dir"), data_dir=dg.get("data_dir"),
                                           num_threads=threads, load_root_fn=load_root_fn)
                if done:
                    skipped.append(job["id"])
                    records[job["id"]] = read_record(graph_dir, job["id"])
                    bar.update(1)
                else:
                    todo.append(job)
            if pool is not None and len(todo) > 1 and level > 0:
                finished = _parallel(pool, graph_dir, todo, node_kwargs)
            else:
                finished = (_sequential(graph_dir, job, node_kwargs, injected) for job in todo)
            for job in finished:
                built.append(job["id"])
                records[job["id"]] = read_record(graph_dir, job["id"])
                write_graph(graph_dir, jobs, extra, records)
                bar.set_postfix_str(job["id"])
                bar.update(1)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        raise
    finally:
        if pool is not None:
            if interrupted:  # stopped (SIGTERM, Ctrl-C): end the running nodes now, resume rebuilds them
                kill_workers(before)
                pool.shutdown(wait=False, cancel_futures=True)
            else:  # done, or a node failed: let the other running nodes finish and save their weights
                pool.shutdown(cancel_futures=True)
        stack.close()
        bar.close()
    for job in jobs:
        meta = records[job["id"]]["meta"]
        if meta.get("val_accuracy") is not None:
            accs.append(meta["val_accuracy"])
    graph = write_graph(graph_dir, jobs, extra, records)
    return {"graph_dir": str(graph_dir), "graph_json": str(graph_dir / "graph.json"), "nodes": len(jobs),
            "built": built, "skipped": skipped, "seconds": time.perf_counter() - start,
            "mean_val_accuracy": sum(accs) / len(accs) if accs else None, "complete": graph["complete"],
            "num_threads": threads, "workers": workers, "gpus": gpus}


def _parallel(pool, graph_dir: Path, todo: list[dict], node_kwargs: Mapping):
    """Build `todo` (one level: parents all done) in the pool; yield each job as it finishes."""
    from concurrent.futures import as_completed

    futures = {pool.submit(build_node, graph_dir, job, **node_kwargs): job for job in todo}
    for future in as_completed(futures):
        future.result()   # a failed node raises here with its traceback; finished ones are already saved
        yield futures[future]


def _sequential(graph_dir: Path, job: dict, node_kwargs: Mapping, injected: Mapping) -> dict:
    build_node(graph_dir, job, **node_kwargs, **injected)
    return job
