"""Running MoTHer recovery for the experiments, through recovery's own entry points only.

- `recovery_options(cfg, overrides)`: the `recovery` config group (conf/recovery/paper.yaml) with per-experiment
  overrides merged in, as the keyword arguments of `recovery.stage.recover`.
- `recover_graph(cfg, graph_dir, work_dir, overrides)`: `recovery.stage.recover` on a graph folder scored
  against its graph.json; cached in `work_dir` (a rerun with the same graph and options reads the result back).
- `analyze(graph_dir, options)` + `forest(...)`: the two halves of recovery for experiments that reuse one
  weight analysis many times (c sweep, clustering subsamples).

Stages (`analysis.stages`): `none`, the paper's protocol (Sec. 6.1, "We label all of the models as
specialization-trained"), tells every recovery that each model is a specialization (fine-tuned) model; `given`
passes graph.json's stages, whose roots are generalization models, which tells recovery where each root is
(recovery's stage_order then charges an edge into a root one more lambda).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.io import read_json, sha256_file, write_json
from common.paths import portable

log = logging.getLogger("mother.analysis")
OPTION_KEYS = ("layers", "distance", "direction", "cluster", "tree")
CACHE_VERSION = 3   # bump when recover()'s outputs change meaning (2: clustering_accuracy_known_k; 3: stages)
STAGES = ("none", "given")


def _merge(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def recovery_options(cfg: DictConfig, overrides: Mapping | None = None) -> dict:
    """cfg.recovery's layers/distance/direction/cluster/tree (absent: recovery's defaults), then the experiments'
    common protocol (cfg.analysis.recovery, e.g. known trees), then `overrides`, merged in that order."""
    base = OmegaConf.to_container(cfg.recovery, resolve=True) if "recovery" in cfg else {}
    if "analysis" in cfg and cfg.analysis.get("recovery"):
        base = _merge(base, OmegaConf.to_container(cfg.analysis.recovery, resolve=True))
    if overrides is not None and OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    opts = {k: dict(base.get(k) or {}) for k in OPTION_KEYS}
    unknown = set(overrides or {}) - set(OPTION_KEYS)
    if unknown:
        raise ValueError(f"recovery overrides {sorted(unknown)} are not among {OPTION_KEYS}")
    return _merge(opts, overrides or {})


def _key(graph_dir: Path, options: Mapping) -> str:
    """Cache key: the graph's graph.json bytes + the options."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:".encode() + sha256_file(Path(graph_dir) / "graph.json").encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def recover_graph(cfg: DictConfig, graph_dir: Path, overrides: Mapping | None = None, *,
                  plot: bool = False, stages: str | None = None) -> dict:
    """MoTHer on a graph folder, scored against its graph.json.

    Returns {"tree", "metrics", "options", "work_dir", "cached", "analysis"}: "analysis" is the run's own weight
    analysis (None when cached), so that callers measure more without reading the weights again. The run goes into
    ${analysis.work_dir}/<graph folder name>/<options hash>/ (tree.json, metrics.json, key.json); a call with the
    same graph.json and options reuses it, so experiments sharing a recovery (Table 1 and its ablation) share it.
    `stages` (none | given) overrides `analysis.stages` for an experiment whose protocol fixes it.
    """
    from recovery.stage import recover

    options = recovery_options(cfg, overrides)
    graph_dir = Path(graph_dir)
    stages = analysis_stages(cfg) if stages is None else stages
    key = _key(graph_dir, {**options, "stages": stages})
    work_dir = Path(cfg.analysis.work_dir) / graph_dir.name / key[:12]
    stamp = work_dir / "key.json"
    if stamp.is_file() and read_json(stamp).get("key") == key and (work_dir / "metrics.json").is_file():
        return {"tree": read_json(work_dir / "tree.json"), "metrics": read_json(work_dir / "metrics.json"),
                "options": {**options, "stages": stages}, "work_dir": portable(work_dir), "cached": True,
                "analysis": None}
    stages_file = None
    if stages == "none":   # the paper's protocol: every model a specialization model
        stages_file = write_json(work_dir / "stages.json",
                                 all_specialization(read_json(graph_dir / "graph.json")["nodes"]))
    out = recover(graph_dir, ground_truth=graph_dir / "graph.json", output_dir=work_dir, plot=plot,
                  seed=int(cfg.seed), quiet=True, stages_file=stages_file, **options)
    write_json(stamp, {"key": key, "graph": str(graph_dir), "options": options, "stages": stages})
    return {"tree": out["tree"], "metrics": out["metrics"], "options": {**options, "stages": stages},
            "work_dir": portable(work_dir), "cached": False, "analysis": out["analysis"]}


def accuracy_run(cfg: DictConfig, label: str, graph_spec: Any, overrides: Mapping | None = None, *,
                 plot: bool = False) -> dict:
    """Build/reuse a graph, recover it, and summarise the scores as one JSON-able row, with the paper's premises
    measured on the graph (analysis.premises: why edges go wrong)."""
    from analysis.graphs import read_graph, resolve_graph

    graph_dir = resolve_graph(cfg, graph_spec)
    graph = read_graph(graph_dir)
    out = recover_graph(cfg, graph_dir, overrides, plot=plot)
    premises = graph_premises(cfg, graph_dir, graph, overrides, out["analysis"])
    m = out["metrics"]
    roots = [n for n in graph["nodes"] if graph["stage"].get(n) == "generalization"
             and not any(e[1] == n for e in graph["edges"])]
    # with n_trees=truth the edges were scored on the known trees (the paper's protocol); recovery scored the
    # clustering itself with the number of trees known, from the same weight pass
    clustering = m.get("clustering_accuracy_known_k", m["clustering_accuracy"])
    return {"label": label, "graph": graph_dir.name, "graph_dir": portable(graph_dir), "n_models": len(graph["nodes"]),
            "roots": roots, "edge_accuracy": m["edge_accuracy"], "undirected_accuracy": m["undirected_accuracy"],
            "per_tree": per_tree(m), "clustering_accuracy": clustering,
            "n_trees_true": m["n_trees_true"], "n_trees_pred": m["n_trees_pred"],
            "distance_metric": out["tree"].get("distance_metric"), "options": out["options"],
            "work_dir": out["work_dir"], "premises": premises}


def graph_premises(cfg: DictConfig, graph_dir: Path, graph: Mapping, overrides: Mapping | None = None,
                   wa: Any = None) -> dict:
    """The paper's premises measured on a graph (analysis.premises) from the weight analysis `wa` of a recovery with
    the run's options (recover_graph's "analysis"), or, when None (a cached recovery), from a new weight pass."""
    from analysis.premises import premise_measures

    return premise_measures(graph, wa if wa is not None else analyze(graph_dir, recovery_options(cfg, overrides)))


def accuracy_note(row: Mapping, paper: float, what: str, accuracy: float | None = None, tol: float = 0.05) -> str:
    """Our accuracy (row["edge_accuracy"] unless `accuracy` is given) beside the paper's, where the row's edges were
    lost (error_split), and where it differs from the paper's, why: the premises measured on the graph
    (row["premises"])."""
    from analysis.premises import premise_note
    from analysis.report import compare

    ours = row["edge_accuracy"] if accuracy is None else accuracy
    note = compare(ours, paper, what=what, tol=tol) + (error_split(row) if accuracy is None else "")
    if abs(ours - paper) > tol and row.get("premises"):
        note += f" ({premise_note(row['premises'])})"
    return note


def error_split(row: Mapping) -> str:
    """Where a row of `accuracy_run` loses edges, as a note suffix: ": m of n edges misplaced, k placed right but
    directed wrong", or "" without an undirected accuracy."""
    n = int(row["n_edges"]) if "n_edges" in row else int(row["n_models"]) - int(row["n_trees_true"])
    if n <= 0 or "undirected_accuracy" not in row:
        return ""
    right, placed = round(row["edge_accuracy"] * n), round(row["undirected_accuracy"] * n)
    return f": {n - placed} of {n} edges misplaced, {placed - right} placed right but directed wrong"


def accuracy_frame(rows: list[Mapping], label: str = "sub-graph") -> "pd.DataFrame":
    """Rows of `accuracy_run` as a table: label, one column per true tree (its root id), graph, clustering."""
    import pandas as pd

    roots: list[str] = []
    for r in rows:
        roots += [t for t in r["per_tree"] if t not in roots]
    records = []
    for r in rows:
        rec = {label: r["label"], **{t: r["per_tree"].get(t) for t in roots},
               "Model Graph": r["edge_accuracy"], "clustering": r["clustering_accuracy"],
               "distance": r.get("distance_metric"), "models": r["n_models"]}
        records.append(rec)
    return pd.DataFrame(records)


def analysis_stages(cfg: DictConfig) -> str:
    """`analysis.stages` (none | given; module docstring), checked."""
    from common.errors import ConfigError

    stages = str(cfg.analysis.get("stages", "none")) if "analysis" in cfg else "none"
    if stages not in STAGES:
        raise ConfigError(f"analysis.stages must be one of {list(STAGES)}, got {stages!r}")
    return stages


def all_specialization(ids: Iterable[str]) -> dict[str, str]:
    """The paper's protocol (`analysis.stages=none`): every model id labelled a specialization model."""
    return dict.fromkeys(ids, "specialization")


def with_stages(wa: Any, stages: str) -> Any:
    """A weight analysis told the stages of `analysis.stages`: graph.json's (`given`) or all specialization."""
    return dataclasses.replace(wa, stages=all_specialization(wa.ids)) if stages == "none" else wa


def analyze(graph_dir: Path, options: Mapping, *, stages: str = "given", stages_file: Path | None = None) -> Any:
    """recovery.weights.analyze_folder on a graph folder with the layers/distance/direction options; with
    `stages="none"` every model counts as a specialization model (the paper's protocol; module docstring)."""
    from recovery.weights import analyze_folder

    wa = analyze_folder(graph_dir, stages_file=stages_file, layers=options.get("layers", {}),
                        distance=options.get("distance", {}), direction=options.get("direction", {}))
    return with_stages(wa, stages)


def forest(wa: Any, truth: Any, *, labels: np.ndarray | None = None, cluster: Mapping | None = None,
           c: float = 0.3, tree: Mapping | None = None) -> dict:
    """Cluster (unless `labels` are given) and recover the forest from a WeightAnalysis; score against `truth`.

    `tree` takes recovery's tree options (recovery.config.TreeOptions; default: the paper's with this `c`).
    Returns {"edges", "labels", "metrics", "missing"} with recovery.evaluate's metrics.
    """
    from recovery.evaluate import evaluate
    from recovery.stage import solve

    solved = solve(wa, cluster=dict(cluster or {}), tree={"c": c, **dict(tree or {})}, truth=truth, labels=labels)
    edges = [(wa.ids[p], wa.ids[j]) for j, p in enumerate(solved.parent) if p >= 0]
    labels = solved.clustering.labels.tolist()
    metrics, _ = evaluate(wa.ids, edges, labels, truth)
    return {"edges": edges, "labels": labels, "metrics": metrics, "missing": solved.missing}


def per_tree(metrics: Mapping) -> dict[str, float | None]:
    """root id -> edge accuracy of that ground-truth tree."""
    return {root: t["accuracy"] for root, t in metrics["per_tree"].items()}
