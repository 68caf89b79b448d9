"""Weight statistics along training trajectories, for the direction-score experiments (Fig. 2, 8, 13, 16).

- `root_trajectories`: the shared fine-tunes of the configured roots, with checkpoints (`analysis.finetunes`);
- `series_stats`: recovery's direction statistics of a series of checkpoints, per layer kind;
- `finetune_panels`: those statistics along the shared fine-tunes, judged by their trends (`analysis.trends`).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.finetunes import analysis_cache, finetune_run, node_name
from analysis.trends import spearman, trend
from common.errors import ConfigError
from common.io import jsonable

log = logging.getLogger("mother.analysis")


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


def series_stats(files: Sequence[str | Path], *, stats: Sequence[str], kinds: Sequence[str],
                 layers: Mapping | None = None, per_layer: bool = False) -> dict[str, dict[str, Any]]:
    """Direction statistics summed over the layers of each kind, per file: {stat: {kind: [value per file]}}.

    Layers are chosen by recovery's selection (`recovery.layers.select_layers`: names and shapes shared by all
    files, heads left out, timm's fused qkv split into q, k, v) and the statistics are recovery's
    (`recovery.direction.weight_stat`), so the numbers are the ones MoTHer's direction prior uses. `layers`
    holds extra selection options (regex, exclude_heads). With `per_layer`, each value is instead
    {"sum": s, "per_layer": {layer: v}}.
    """
    from recovery.checkpoints import ModelSource
    from recovery.reader import ModelReader
    from recovery.direction import weight_stat
    from recovery.layers import select_layers

    models = [ModelSource.from_safetensors(f) for f in files]
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
        raise ConfigError("no roots configured (analysis.trajectory.roots is empty)")
    repeated = sorted(r for r, n in Counter(map(str, k.roots)).items() if n > 1)
    if repeated:   # the panels summarise one run per root (Spearman rho keyed by root)
        raise ConfigError(f"analysis.trajectory.roots lists {repeated} more than once; each root has one fine-tune run")
    cache = analysis_cache(cfg, str(k.cache))
    runs = []
    for i, root in enumerate(k.roots):
        task = str(k.tasks[i % len(k.tasks)])
        recipe = {**jsonable(k.recipe), "seed": derive_seed(cfg.seed, "trajectory", root, task)}
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
