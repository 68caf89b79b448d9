"""The sparse recovery on a model folder: reading, neighbour blocks (one process or a SLURM array), tree.json.

`recover_folder` is what `recover(..., candidates="knn")` runs (recovery.stage). The neighbour search, the only
all-pairs step, splits into row blocks (`neighbour_blocks`): each block is one task that reads the folder and
writes `block_<start>.npz`; `neighbours_on_launcher` runs the blocks as one submitit job array through the project's
Hydra launcher config (conf/hydra/launcher/slurm.yaml or local.yaml, data_gen.slurm.make_executor) and merges
them. Strips start at fixed multiples, so the merged blocks equal the single-process neighbours bit for bit.

Only the l2 metric (the mean of per-layer l2, as the dense path) and the paper's tree (orient=edges) are
supported here; models with NaN/Inf weights are left out with a warning. Duplicates are not merged.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.errors import ConfigError
from common.schema import merge_options
from recovery import sparse
from recovery.config import DirectionOptions, LayersOptions

log = logging.getLogger("mother.recovery.sparse")


@dataclass
class FolderMatrix:
    """A folder's models as rows: distance layers side by side in `x`, direction scores, stages."""
    ids: list[str]
    x: np.ndarray
    splits: list[int]
    layers: list[str]
    direction: np.ndarray
    direction_per_layer: np.ndarray
    direction_layers: list[str]
    stages: dict[str, str]
    excluded: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_folder(path: str | Path, *, layers: Mapping | None = None, direction: Mapping | None = None,
                stages_file: str | Path | None = None, strict: bool = False, chunk: int = 4096) -> FolderMatrix:
    """Read every model's distance layers (flattened) and direction statistic, with the dense path's layer
    choice (recovery.layers.choose_layers, same kinds and fallback); `chunk` models are open at a time."""
    from recovery.checkpoints import discover
    from recovery.reader import iter_stacked, open_all
    from recovery.direction import weight_stat
    from recovery.layers import choose_layers, split_architectures
    from recovery.ties import tie_groups

    lo = merge_options(LayersOptions, layers, "recovery.layers")
    ro = merge_options(DirectionOptions, direction, "recovery.direction")
    if ro.get("cues"):
        raise ConfigError("recovery.candidates=knn does not support recovery.direction.cues (use candidates=dense)")
    catalog = discover(path, stages_file, strict=strict)
    warnings = list(catalog.warnings)
    models, other = split_architectures(catalog.models)
    excluded = {**catalog.excluded, **other}
    dist_layers, _, dist_fb = choose_layers(models, lo["kinds"], lo["regex"], lo["exclude_heads"], lo["fallback"])
    dir_layers, _, dir_fb = choose_layers(models, ro["kinds"], ro["regex"], lo["exclude_heads"], lo["fallback"])
    fell = [f"{role} kinds {asked} match no tensor of these models, used kinds {used}"
            for role, asked, used in (("distance", lo["kinds"], dist_fb), ("direction", ro["kinds"], dir_fb)) if used]
    if fell:
        warnings.append("layers: " + "; ".join(fell))
    n = len(models)
    names = list(dict.fromkeys([l.tensor for l in dist_layers] + [l.tensor for l in dir_layers]))
    parts: dict[str, list[np.ndarray]] = {l.name: [] for l in dist_layers}
    dvals = np.zeros((n, len(dir_layers)))
    for start in range(0, n, chunk):      # a chunk of models open at a time (open-file limits)
        stack, readers = open_all(models[start:start + chunk])
        with stack:
            for name, xs in iter_stacked(readers, names):
                for layer in dist_layers:
                    if layer.tensor == name:
                        parts[layer.name].append(layer.take(xs).reshape(len(readers), -1).astype(np.float32))
                for k, layer in enumerate(dir_layers):
                    if layer.tensor == name:
                        y = layer.take(xs)
                        dvals[start:start + len(readers), k] = [weight_stat(y[i], ro["stat"]) for i in range(len(y))]
    x = np.concatenate([np.concatenate(parts[l.name]) for l in dist_layers], axis=1)
    splits = np.cumsum([0] + [sum(p.shape[1] for p in parts[l.name][:1]) for l in dist_layers]).tolist()
    good = np.isfinite(x).all(axis=1) & np.isfinite(dvals).all(axis=1)
    for i in np.flatnonzero(~good):
        excluded[models[i].id] = f"{models[i].path}: NaN/Inf weights or undefined direction statistic"
        warnings.append(f"excluded model {models[i].id}: {excluded[models[i].id]}")
    if strict and (~good).any():
        raise ConfigError(f"recovery.strict: {next(iter(excluded.values()))}")
    keep = np.flatnonzero(good)
    ids = [models[i].id for i in keep]
    tied = int((tie_groups(dvals[keep]) >= 0).sum())
    if tied:
        warnings.append(f"direction: {tied} models are equal on every direction layer (kinds {list(ro['kinds'])}), and "
                        f"recovery.candidates=knn leaves them tied (their edges follow the order of the files): use "
                        f"candidates=dense (it orders them on the other layers, recovery/ties.py) or direction kinds "
                        f"that their fine-tunes changed")
    return FolderMatrix(ids, np.ascontiguousarray(x[keep]), splits, [l.name for l in dist_layers],
                        dvals[keep].sum(axis=1), dvals[keep], [l.name for l in dir_layers],
                        {i: catalog.stages[i] for i in ids}, excluded, warnings)


# ----------------------------------------------------------------------------------------------- neighbour blocks
def block_task(path: str, start: int, stop: int, opts: Mapping, out_dir: str,
               read: Mapping | None = None) -> str:
    """One row block of the neighbour search (a SLURM array task): read the folder, write block_<start>.npz."""
    from common.io import atomic_write

    opts = sparse.sparse_options(dict(opts))
    fm = read_folder(path, **dict(read or {}))
    z = sparse.project(fm.x, opts["project_dim"], opts["seed"])
    ids, d2 = sparse.knn_block(z, start, stop, opts["pool"], opts["strip"])
    out = Path(out_dir) / f"block_{start:09d}.npz"

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, start=start, ids=ids, d2=d2, n=fm.x.shape[0])

    atomic_write(out, _write)
    return str(out)


def load_blocks(files: list[str | Path]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(start, ids, d2) of each block file."""
    out = []
    for f in files:
        with np.load(f) as b:
            out.append((int(b["start"]), b["ids"], b["d2"]))
    return out


def neighbour_blocks(path: str | Path, n: int, opts: Mapping, n_blocks: int, out_dir: str | Path,
                     read: Mapping | None = None) -> list[str]:
    """Run every block in this process (the local form of the array); returns the block files."""
    opts = sparse.sparse_options(dict(opts))
    return [block_task(str(path), a, b, opts, str(out_dir), read)
            for a, b in sparse.block_bounds(n, n_blocks, opts["strip"])]


def neighbours_on_launcher(path: str | Path, n: int, opts: Mapping, n_blocks: int, out_dir: str | Path,
                           launcher: Mapping[str, Any], read: Mapping | None = None, name: str = "mother_knn"
                           ) -> list[str]:
    """Run the blocks as one submitit job array with the Hydra launcher config `launcher` (data_gen.slurm's
    make_executor: slurm or local); wait for all and return the block files. A failed task raises."""
    from data_gen.slurm import make_executor

    opts = sparse.sparse_options(dict(opts))
    bounds = sparse.block_bounds(n, n_blocks, opts["strip"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executor = make_executor(launcher, out_dir / "submitit", name=name)
    k = len(bounds)
    jobs = executor.map_array(block_task, [str(path)] * k, [a for a, _ in bounds], [b for _, b in bounds],
                              [dict(opts)] * k, [str(out_dir)] * k, [dict(read or {})] * k)
    log.info("neighbour search: %d blocks submitted as array %s", k, jobs[0].job_id.split("_")[0])
    return [j.result() for j in jobs]


# ----------------------------------------------------------------------------------------------- recover
class _EdgeLookup:
    """Distances of the recovered edges, indexed like a dense matrix: d[parent, child]."""

    def __init__(self, pairs: Mapping[tuple[int, int], float]):
        self.pairs = dict(pairs)

    def __getitem__(self, key: tuple[int, int]) -> float:
        return self.pairs[(min(key), max(key))]


def recover_folder(path: str | Path, *, stages_file: str | Path | None = None, layers: Mapping | None = None,
                   distance: Mapping | None = None, direction: Mapping | None = None,
                   cluster: Mapping | None = None, tree: Mapping | None = None, sparse_opts: Mapping | None = None,
                   strict: bool = False, blocks: list | None = None, launcher: Mapping[str, Any] | None = None,
                   blocks_dir: str | Path | None = None) -> tuple[Any, Any, np.ndarray, dict, dict]:
    """Read the folder and recover it on candidate edges.

    With `sparse_opts["blocks"]` > 1 the neighbour search runs as that many array tasks of the submitit
    `launcher` (a Hydra launcher config; recovery.stage takes the run's own), writing into `blocks_dir`.

    Returns (analysis namespace shaped like recovery.weights.WeightAnalysis for recovery.stage's tree.json,
    clustering, parent array, lambda per cluster, timings).
    """
    from types import SimpleNamespace

    distance = dict(distance or {})
    if distance.get("metric", "auto") not in ("auto", "l2"):
        raise ConfigError(f"recovery.candidates=knn supports the l2 distance only, got "
                          f"recovery.distance.metric={distance['metric']!r}; use recovery.candidates=dense")
    tree = dict(tree or {})
    if tree.get("orient", "edges") != "edges":
        raise ConfigError("recovery.candidates=knn supports the paper's tree (recovery.tree.orient=edges) only; use "
                          "recovery=paper, or recovery.candidates=dense")
    t0 = time.perf_counter()
    fm = read_folder(path, layers=layers, direction=direction, stages_file=stages_file, strict=strict)
    if distance.get("metric", "auto") == "auto":
        fm.warnings.append("recovery.candidates=knn: distance metric auto taken as l2 (LoRA ranks need the dense "
                           "path: recovery.candidates=dense)")
    t_read = time.perf_counter() - t0
    gen = np.array([fm.stages[i] == "generalization" for i in fm.ids])
    opts = sparse.sparse_options(dict(sparse_opts or {}))
    if blocks is None and opts["blocks"] > 1:
        if launcher is None:
            raise ConfigError(f"recovery.sparse.blocks={opts['blocks']} needs a submitit launcher: run with "
                              f"hydra/launcher=slurm (or local)")
        read = {"layers": layers, "direction": direction, "stages_file": stages_file, "strict": strict}
        out = Path(blocks_dir) if blocks_dir is not None else Path(path) / ".knn_blocks"
        blocks = load_blocks(neighbours_on_launcher(path, len(fm.ids), opts, opts["blocks"], out, launcher, read))
    res = sparse.recover_matrix(fm.x, fm.direction, gen, splits=fm.splits, sparse=dict(sparse_opts or {}),
                                cluster=dict(cluster or {}), c=float(tree.get("c", 0.3)),
                                stage_order=bool(tree.get("stage_order", True)), blocks=blocks)
    edges = {(min(p, j), max(p, j)): 0.0 for j, p in enumerate(res.parent) if p >= 0}
    lookup = dict(zip(zip(res.i.tolist(), res.j.tolist()), res.d.tolist()))
    dist = _EdgeLookup({e: lookup[e] for e in edges})
    info = {"candidates": "knn", "read_s": round(t_read, 3), **{k: round(v, 3) for k, v in res.seconds.items()},
            "n_candidate_pairs": int(len(res.i)), "n_groups": res.n_groups,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    wa = SimpleNamespace(ids=fm.ids, stages=fm.stages, distance=dist, l2=dist, distance_metric="l2",
                         direction=fm.direction, direction_per_layer=fm.direction_per_layer,
                         direction_layers=fm.direction_layers,
                         direction_stat=dict(direction or {}).get("stat", "kurtosis"),
                         layers=fm.layers, dropped={}, excluded=fm.excluded, warnings=fm.warnings, info=info,
                         aliases={}, layer_selection={}, sources=None, selected=None, rank_evidence=None, ties=None)
    return wa, res.clustering, res.parent, res.lambdas, info
