"""The recovery stage: a folder of models in, `tree.json` (+ `metrics.json`, `tree.png`) out.

`recover(path, **options)` is the plain-Python entry point (no Hydra); `run(cfg)` is the stage that
`python run.py +experiment=recover input=PATH` calls. Steps: read weights and compute distances and direction
scores (recovery.weights), cluster into trees on l2 (recovery.cluster), MDST of M = D + lambda (K xor T) per
tree (recovery.mother), name each edge finetune/adapter, score against a ground truth if one is given.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.io import write_json
from recovery.cluster import cluster_trees
from recovery.evaluate import evaluate, load_graph
from recovery.mother import recover_forest

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Stage entry: recover the forest of `cfg.input` into `cfg.output_dir` with the options in `cfg.recovery`."""
    if "input" not in cfg or OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise ValueError("recovery: no input folder given; run `python run.py +experiment=recover input=PATH` "
                         "with PATH a folder of *.safetensors models, Hugging Face model folders or a data_gen graph")
    if "recovery" not in cfg:
        raise ValueError("recovery: config has no 'recovery' options group (conf/recovery/paper.yaml)")
    options = OmegaConf.to_container(cfg.recovery, resolve=True)
    output_dir = cfg.get("output_dir") or cfg.paths.output_dir
    return recover(cfg.input, ground_truth=cfg.get("ground_truth"), output_dir=output_dir,
                   stages_file=cfg.get("stages_file"), seed=int(cfg.get("seed", 0)), **options)


def recover(path: str | Path, *, ground_truth: str | Path | None = None, output_dir: str | Path | None = None,
            stages_file: str | Path | None = None, layers: Mapping | None = None, distance: Mapping | None = None,
            direction: Mapping | None = None, cluster: Mapping | None = None, tree: Mapping | None = None,
            plot: bool = True, seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Recover the Model Graph of the models in `path`.

    Args:
        path: folder of models (see recovery.weights.analyze_folder).
        ground_truth: graph JSON to score against, or None.
        output_dir: where tree.json / metrics.json / tree.png go; None writes nothing.
        stages_file: optional id -> stage file (else graph.json stages, else all specialization).
        layers, distance, direction: options passed to recovery.weights (conf/recovery/paper.yaml).
        cluster: {n_trees: "auto" | int, linkage, min_gap_ratio, threshold}.
        tree: {c: weight of the direction prior, stage_order: penalise specialization -> generalization edges}.
        plot: draw tree.png when writing output.
        seed: the run's seed, recorded (recovery itself is deterministic).
        quiet: do not print the summary.

    Returns:
        {"tree": tree.json dict, "metrics": metrics dict or None, "paths": {name: file}, "warnings": [...]}.
    """
    from recovery.weights import analyze_folder, edge_relations  # the weights side (heavy I/O) on first use

    layers, distance, direction = dict(layers or {}), dict(distance or {}), dict(direction or {})
    cluster = {"n_trees": "auto", "linkage": "single", **dict(cluster or {})}
    tree = {"c": 0.3, "stage_order": True, **dict(tree or {})}
    truth = load_graph(ground_truth) if ground_truth else None  # fail on a bad ground truth before any reading
    t0 = time.perf_counter()
    wa = analyze_folder(path, stages_file=stages_file, layers=layers, distance=distance, direction=direction)
    t_weights = time.perf_counter() - t0

    clustering = cluster_trees(wa.l2, **cluster)
    generalization = np.array([wa.stages[i] == "generalization" for i in wa.ids])
    parent, lambdas = recover_forest(wa.distance, wa.direction, generalization, clustering.labels, c=tree["c"],
                                    stage_order=bool(tree["stage_order"]))
    ids = wa.ids
    edges = [(ids[p], ids[j]) for j, p in enumerate(parent) if p >= 0]
    rank_tol = {"rank_tol": distance["rank_tol"]} if "rank_tol" in distance else {}
    relations = edge_relations(path, edges, layers=layers, **rank_tol) if edges else {}
    warnings = list(wa.warnings) + ([clustering.evidence["warning"]] if "warning" in clustering.evidence else [])

    doc = _tree_doc(wa, parent, clustering, lambdas, relations)
    doc.update(input=str(path), seed=seed, warnings=warnings, timings={"weights_s": t_weights,
               "total_s": time.perf_counter() - t0},
               options={"layers": layers, "distance": distance, "direction": direction, "cluster": cluster,
                        "tree": tree, "stages_file": str(stages_file) if stages_file else None})
    metrics = None
    if truth is not None:
        metrics, eval_warnings = evaluate(ids, edges, clustering.labels.tolist(), truth)
        metrics["ground_truth"] = str(ground_truth)
        warnings += eval_warnings
    for w in warnings:
        log.warning(w)

    paths: dict[str, str] = {}
    if output_dir is not None:
        out = Path(output_dir)
        paths["tree"] = str(write_json(out / "tree.json", _jsonable(doc)))
        if metrics is not None:
            paths["metrics"] = str(write_json(out / "metrics.json", _jsonable(metrics)))
        if plot:
            from recovery.plot import plot_tree
            paths["plot"] = str(plot_tree(doc, out / "tree.png", metrics))
    if not quiet:
        print(summary(doc, metrics, paths))
    return {"tree": doc, "metrics": metrics, "paths": paths, "warnings": warnings}


def _tree_doc(wa: Any, parent: np.ndarray, clustering: Any, lambdas: dict[int, float],
              relations: Mapping[tuple[str, str], str]) -> dict:
    """The tree.json dict (see docs/DESIGN.md) from the analysis and the recovered parent array."""
    ids = wa.ids
    depth = _depths(parent)
    nodes, edges = [], []
    for j, node in enumerate(ids):
        entry = {"id": node, "cluster": int(clustering.labels[j]), "direction_score": float(wa.direction[j]),
                 "stage": wa.stages[node], "root": bool(parent[j] < 0), "depth": int(depth[j]),
                 "direction_per_layer": np.asarray(wa.direction_per_layer[j]).tolist()}
        if parent[j] >= 0:
            edge = (ids[parent[j]], node)
            entry.update(base_model=edge[0], base_model_relation=relations.get(edge, "finetune"))
            edges.append({"parent": edge[0], "child": node, "distance": float(wa.distance[parent[j], j]),
                          "l2": float(wa.l2[parent[j], j]), "base_model_relation": entry["base_model_relation"]})
        nodes.append(entry)
    trees = []
    for k in range(clustering.n_clusters):
        members = np.flatnonzero(clustering.labels == k)
        roots = [ids[j] for j in members if parent[j] < 0]
        trees.append({"cluster": k, "root": roots[0], "size": len(members), "depth": int(depth[members].max()),
                      "lambda": lambdas.get(k, 0.0)})
    return {"nodes": nodes, "edges": edges, "trees": trees, "distance_metric": wa.distance_metric,
            "direction_stat": wa.direction_stat, "direction_layers": list(wa.direction_layers),
            "layers": list(wa.layers), "dropped": dict(wa.dropped), "excluded": dict(wa.excluded),
            "clustering": clustering.evidence, "info": wa.info}


def _depths(parent: np.ndarray) -> np.ndarray:
    depth = np.full(len(parent), -1)
    for j in range(len(parent)):
        trail, x = [], j
        while x >= 0 and depth[x] < 0:
            trail.append(x)
            x = parent[x]
        base = -1 if x < 0 else depth[x]
        for k, node in enumerate(reversed(trail)):
            depth[node] = base + 1 + k
    return depth


def summary(doc: dict, metrics: dict | None, paths: Mapping[str, str]) -> str:
    """A short human-readable report of a recovery run."""
    ev = doc["clustering"]
    lines = [f"MoTHer recovery of {doc['input']}: {len(doc['nodes'])} models -> {len(doc['trees'])} trees "
             f"({ev.get('decision', ev.get('rule', ''))})",
             f"  distance {doc['distance_metric']} on {len(doc['layers'])} tensors, direction {doc['direction_stat']} "
             f"on {len(doc['direction_layers'])}; {len(doc['dropped'])} tensors dropped, "
             f"{len(doc['excluded'])} models excluded"]
    relations = {e["child"]: e["base_model_relation"] for e in doc["edges"]}
    for t in doc["trees"]:
        kinds = sorted({relations[n["id"]] for n in doc["nodes"] if n["cluster"] == t["cluster"] and not n["root"]})
        lines.append(f"  tree {t['cluster']}: root {t['root']}, {t['size']} models, depth {t['depth']}"
                     + (f", edges {'/'.join(kinds)}" if kinds else ""))
    if metrics is not None:
        acc = metrics["edge_accuracy"]
        lines.append(f"  edge accuracy {'n/a' if acc is None else f'{acc:.3f}'} "
                     f"({metrics['n_edges_correct']}/{metrics['n_edges_true']}), undirected "
                     f"{_fmt(metrics['undirected_accuracy'])}, clustering {metrics['clustering_accuracy']:.3f} "
                     f"({metrics['n_trees_pred']} trees found, {metrics['n_trees_true']} true)")
        for root, t in metrics["per_tree"].items():
            lines.append(f"    true tree {root}: {t['n_correct']}/{t['n_edges']} edges ({_fmt(t['accuracy'])})")
    if doc.get("warnings"):
        lines.append(f"  {len(doc['warnings'])} warnings (see tree.json)")
    if paths:
        lines.append("  wrote " + ", ".join(paths.values()))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unpacked, tuples as lists, non-finite floats as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
