"""Training trajectories for the direction-score experiments (Fig. 2, 8, 13, 16; similar and merged models).

Three pieces shared by A2's experiments:
- `trend`: how monotone a score is along training (fraction of steps in the expected direction, Spearman rho);
- `cached_finetune`: `data_gen.finetune.finetune` with a resumable cache (a model whose weights file exists with
  the recorded sha256 and the same spec is never trained again);
- `series_stats`: weight statistics (recovery's direction statistics) of a series of checkpoints, per layer kind.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

EXPECTED = {"generalization": 1, "specialization": -1}  # sign of the paper's kurtosis trend per training stage
_STEP = re.compile(r"^step_(\d+)\.safetensors$")


# --- trends -------------------------------------------------------------------------------------------------

def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of y with x; None when undefined (fewer than 3 points or a constant series)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(spearmanr(x, y).statistic)
    return None if math.isnan(rho) else rho


def monotone_fraction(values: Sequence[float], sign: int) -> float | None:
    """Fraction of consecutive steps that move in direction `sign` (+1 up, -1 down); None for < 2 points."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    return float(np.mean(np.sign(np.diff(v)) == np.sign(sign)))


def trend(steps: Sequence[int], values: Sequence[float], sign: int = -1) -> dict[str, Any]:
    """Summary of a score along training: points, first/last value, monotone fraction, Spearman rho with step.

    `sign` is the expected direction (+1 generalization, -1 specialization); `agrees` says whether the
    overall trend (rho) has that sign.
    """
    rho = spearman(steps, values)
    return {"n_points": len(values), "first": float(values[0]), "last": float(values[-1]),
            "monotone_fraction": monotone_fraction(values, sign), "spearman": rho,
            "agrees": None if rho is None else bool(np.sign(rho) == np.sign(sign))}


# --- checkpoints ----------------------------------------------------------------------------------------------

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


# --- cached fine-tuning ---------------------------------------------------------------------------------------

def to_plain(x: Any) -> Any:
    """Plain JSON types from OmegaConf containers, paths and numpy scalars."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, Mapping):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


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
    spec = to_plain(spec)
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
                   task=task, recipe=dict(to_plain(recipe)), out_dir=cache_dir,
                   node_id=node_id, checkpoint_every=checkpoint_every, num_threads=num_threads, progress=False)
    ckpts = []
    if checkpoint_every:
        ckpts = [[s, str(p)] for s, p in checkpoint_series(cache_dir / "checkpoints" / node_id)]
    rec = {**to_plain(out), "node_id": node_id, "spec": spec, "checkpoints": ckpts,
           "num_classes": int(task.num_classes)}
    write_json(rec_path, rec)
    return {**rec, "cached": False}


# --- rendering helpers shared by the trajectory figures ---------------------------------------------------------

def trend_rows(series: Sequence[Mapping], keys: Sequence[str] = ("panel", "label")) -> "pandas.DataFrame":
    """One table row per series: its identifying `keys` and its trend summary."""
    import pandas as pd

    rows = []
    for s in series:
        t = s["trend"]
        rows.append({**{k: s[k] for k in keys}, "points": t["n_points"], "first": t["first"], "last": t["last"],
                     "monotone_frac": t["monotone_fraction"], "spearman_rho": t["spearman"],
                     "expected": "up" if s["sign"] > 0 else "down", "agrees": t["agrees"]})
    return pd.DataFrame(rows)


def plot_panels(series: Sequence[Mapping], panels: Sequence[str], *, ylabel: str, titles: Mapping | None = None,
                xlabel: str = "training step", ncols: int | None = None, sharey: bool = False):
    """Figure with one axis per panel; each series (dict with panel, label, steps, values) is one line.

    A series with `"dashed": True` is drawn dashed (used for runs that did not converge).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=sharey)
    for ax, panel in zip(axes.flat, panels):
        for s in (s for s in series if s["panel"] == panel):
            ax.plot(s["steps"], s["values"], marker=".", linestyle="--" if s.get("dashed") else "-",
                    label=s["label"])
        ax.set_title((titles or {}).get(panel, panel), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


# --- configuration and the shared fine-tuning runs --------------------------------------------------------------

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


def load_root_state(cfg: Any, root: str) -> tuple[str, dict]:
    """(arch, state dict) of a root spec, built-in roots cached under `roots_cache(cfg)`."""
    from data_gen.models import load_root

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


def load_task_data(cfg: Any, name: str, *, image_size: int, seed: int) -> Any:
    """data_gen's task loader (torch/Lightning imported first: with TensorFlow first, training segfaults)."""
    import data_gen.finetune  # noqa: F401
    from data_gen.tasks import load_task

    return load_task(name, image_size=image_size, seed=seed, data_dir=cfg.paths.data_dir)


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
            "recipe": to_plain(recipe), "checkpoint_every": checkpoint_every}
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


def trajectory_files(run: Mapping) -> tuple[list[int], list[str]]:
    """(steps, files) of a fine-tune run: its starting weights as step 0, then its checkpoints.

    Step 0 is the run's own step-0 checkpoint when it has one (the exact weights it started from), else the
    saved init file.
    """
    first = [p for s, p in run["checkpoints"] if s == 0]
    steps, files = [0], [first[0] if first else run["init_file"]]
    for s, p in run["checkpoints"]:
        if s == 0:
            continue  # the start is step 0 already
        steps.append(int(s))
        files.append(p)
    last = int(run.get("steps") or 0)
    if last and last not in steps:  # the final weights when the last step is not a checkpoint step
        steps.append(last)
        files.append(run["weights"])
    return steps, files


# --- weight statistics along a trajectory ---------------------------------------------------------------------

def series_stats(files: Sequence[str | Path], *, stats: Sequence[str], kinds: Sequence[str],
                 layers: Mapping | None = None, per_layer: bool = False) -> dict[str, dict[str, Any]]:
    """Direction statistics summed over the layers of each kind, per file: {stat: {kind: [value per file]}}.

    Layers are chosen by recovery's selection (`recovery.layers.select_layers`: names and shapes shared by all
    files, heads left out, timm's fused qkv split into q, k, v) and the statistics are recovery's
    (`recovery.direction.weight_stat`), so the numbers are the ones MoTHer's direction prior uses. `layers`
    holds extra selection options (regex, exclude_heads). With `per_layer`, each value is instead
    {"sum": s, "per_layer": {layer: v}}.
    """
    from recovery.checkpoints import ModelReader, ModelSource, read_safetensors_header
    from recovery.direction import weight_stat
    from recovery.layers import select_layers

    models = [ModelSource(Path(f).stem, Path(f), [Path(f)], read_safetensors_header(Path(f)), "safetensors")
              for f in files]
    chosen = {kind: select_layers(models, kinds=[kind], **dict(layers or {}))[0] for kind in kinds}
    out: dict[str, dict[str, Any]] = {s: {k: [] for k in kinds} for s in stats}
    for model in models:
        with ModelReader(model) as reader:
            for kind, lays in chosen.items():
                vals = {s: {} for s in stats}
                for lay in lays:
                    w = lay.take(reader.get(lay.tensor))
                    for s in stats:
                        v = float(weight_stat(w, s))
                        if math.isfinite(v):  # undefined on a constant layer: left out of the sum
                            vals[s][lay.name] = v
                        else:
                            log.warning("%s: %s of %s is undefined (constant layer); left out", model.path, s,
                                        lay.name)
                for s in stats:
                    total = float(sum(vals[s].values()))
                    out[s][kind].append({"sum": total, "per_layer": vals[s]} if per_layer else total)
    return out


def root_trajectories(cfg: Any) -> list[dict[str, Any]]:
    """Fine-tune each root of `analysis.trajectory.roots` on its task (`tasks`, cycled) with checkpoints.

    Fig. 2 (right), Fig. 8 and Fig. 13 share these runs (conf/analysis/trajectory.yaml): one cache folder
    (`cache`) and seeds derived from (cfg.seed, "trajectory", root, task) only, so the three experiments train
    each run once between them.
    Returns one record per root (see `finetune_run`) with "root", "task", "steps_list", "files".
    """
    from analysis.report import knobs
    from common.seed import derive_seed

    k = knobs(cfg, "trajectory")
    if not k.roots:
        raise ValueError("no roots configured (analysis.trajectory.roots is empty)")
    cache = analysis_cache(cfg, str(k.cache))
    runs = []
    for i, root in enumerate(k.roots):
        task = str(k.tasks[i % len(k.tasks)])
        recipe = {**to_plain(k.recipe), "seed": derive_seed(cfg.seed, "trajectory", root, task)}
        run = finetune_run(cfg, cache, root=str(root), task=task, recipe=recipe, image_size=int(k.image_size),
                           data_seed=derive_seed(cfg.seed, "data", task),
                           checkpoint_every=int(k.checkpoint_every))
        steps, files = trajectory_files(run)
        runs.append({**run, "root": str(root), "task": task, "steps_list": steps, "files": files})
    return runs


def finetune_panels(cfg: Any, panels: Sequence[tuple[str, str, str]], layers: Mapping | None = None,
                    min_abs_rho: float = 0.8) -> dict[str, Any]:
    """Statistics along the shared root fine-tunes, one panel per (panel name, stat, layer kind).

    Each panel's trend is judged in the direction of its own mean Spearman rho (a statistic need not fall to be
    usable, only be monotone); a panel is "consistent" when every root's |rho| >= `min_abs_rho` with one sign.
    Returns {"series": [...], "panels": {panel: summary}, "min_abs_rho": ...}.
    """
    stats = sorted({s for _, s, _ in panels})
    kinds = sorted({k for _, _, k in panels})
    raw = []
    for run in root_trajectories(cfg):
        values = series_stats(run["files"], stats=stats, kinds=kinds, layers=layers)
        for panel, stat, kind in panels:
            raw.append({"panel": panel, "stat": stat, "kind": kind, "root": run["root"], "task": run["task"],
                        "label": f"{node_name(run['root'])} -> {node_name(run['task'])}",
                        "steps": run["steps_list"], "values": values[stat][kind],
                        "val_accuracy": run.get("val_accuracy")})
    series, summary = [], {}
    for panel, stat, kind in panels:
        mine = [s for s in raw if s["panel"] == panel]
        rhos = [spearman(s["steps"], s["values"]) for s in mine]
        known = [r for r in rhos if r is not None]
        sign = -1 if not known or np.mean(known) <= 0 else 1
        done = [{**s, "sign": sign, "trend": trend(s["steps"], s["values"], sign)} for s in mine]
        series += done
        fracs = [s["trend"]["monotone_fraction"] for s in done]
        consistent = bool(known) and len(known) == len(rhos) and all(
            abs(r) >= min_abs_rho and np.sign(r) == sign for r in known)
        summary[panel] = {"stat": stat, "kind": kind, "direction": "up" if sign > 0 else "down",
                          "spearman": {s["root"]: r for s, r in zip(mine, rhos)},
                          "mean_monotone_fraction": float(np.mean([f for f in fracs if f is not None]))
                          if any(f is not None for f in fracs) else None,
                          "consistent": consistent}
    return {"series": series, "panels": summary, "min_abs_rho": float(min_abs_rho)}


def panel_table(summary: Mapping[str, Mapping]) -> "pandas.DataFrame":
    """One row per panel: Spearman rho per root, mean monotone fraction, consistent or not."""
    import pandas as pd

    rows = []
    for panel, s in summary.items():
        row = {"panel": panel, "trend": s["direction"]}
        row.update({f"rho {node_name(r)}": v for r, v in s["spearman"].items()})
        row.update({"monotone_frac": s["mean_monotone_fraction"], "consistent": "yes" if s["consistent"] else "no"})
        rows.append(row)
    return pd.DataFrame(rows)


# --- model sets for recovery ------------------------------------------------------------------------------------

def graph_folder(folder: str | Path, models: Mapping[str, str | Path], edges: Sequence[tuple[str, str]],
                 meta: Mapping[str, Mapping] | None = None) -> Path:
    """A data_gen-style graph folder (graph.json + models/<id>.safetensors) holding exactly `models`.

    Files are hard-linked (copied when linking fails); models whose parent is not in `edges` as a child are
    roots, staged "generalization" as data_gen stages roots, all others "specialization". Stale files in
    `folder/models` not among `models` are removed, so recovery sees exactly this set.
    """
    import os
    import shutil

    folder = Path(folder)
    mdir = folder / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    for p in mdir.glob("*.safetensors"):
        if p.stem not in models:
            p.unlink()
    for mid, src in models.items():
        dst = mdir / f"{mid}.safetensors"
        if dst.is_file() and sha256_file(dst) == sha256_file(src):
            continue
        tmp = mdir / f".{mid}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    children = {c for _, c in edges}
    graph = {"nodes": sorted(models), "edges": [list(e) for e in edges],
             "stage": {m: ("specialization" if m in children else "generalization") for m in sorted(models)},
             "meta": {m: dict((meta or {}).get(m, {})) for m in sorted(models)}}
    write_json(folder / "graph.json", to_plain(graph))
    return folder
