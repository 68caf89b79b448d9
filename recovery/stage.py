"""The recovery stage: a folder of models in, `tree.json` (+ `metrics.json`, `tree.png`) out.

`recover(path, **options)` is the plain-Python entry point (no Hydra); `run(cfg)` is the stage that
`python run.py +experiment=recover input=PATH` calls. Steps: read weights and compute distances and direction
scores (recovery.weights), cluster into trees on l2 (recovery.cluster), MDST of M = D + lambda (K xor T) per
tree (recovery.mother), name each edge finetune/adapter, score against a ground truth if one is given.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError, InputError
from common.io import jsonable, write_json
from common.schema import merge_options
from recovery.cluster import Clustering, cluster_trees
from recovery.config import ClusterOptions, DirectionOptions, DistanceOptions, LayersOptions
from recovery.evaluate import evaluate, load_graph
from recovery.mother import recover_forest, recover_forest_rooted, tree_options
from recovery.orient import depths
from recovery.ties import ties_record

log = logging.getLogger("mother.recovery")


class SolveResult(NamedTuple):
    """What `solve` recovers from a WeightAnalysis (indices follow the analysis' `ids`)."""
    clustering: Clustering
    parent: np.ndarray               # parent index per model, -1 for a root
    lambdas: dict[int, float]        # weight of the direction prior per cluster (the paper's tree)
    tree_evidence: dict[int, dict]   # orientation evidence per cluster (tree.orient=root)
    missing: list[dict]              # missing-parent groups, with model ids (tree.missing)

# The files recover writes into output_dir (tree.json; export: graphml, dot, model cards; metrics; plot).
OUTPUTS = ("tree.json", "tree.graphml", "tree.dot", "model_cards.md", "metrics.json", "tree.png")


def run(cfg: DictConfig) -> dict:
    """Stage entry: recover the forest of `cfg.input` into `cfg.output_dir` with the options in `cfg.recovery`."""
    if "input" not in cfg or OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise ConfigError("recovery: no input folder given; run `python run.py +experiment=recover input=PATH` "
                          "with PATH a folder of *.safetensors models, Hugging Face model folders or a Hugging Face "
                          "cache, a data_gen graph, or a .txt file of Hugging Face repo ids")
    if "recovery" not in cfg:
        raise ConfigError("recovery: config has no 'recovery' options group (conf/recovery/paper.yaml)")
    options = OmegaConf.to_container(cfg.recovery, resolve=True)
    output_dir = cfg.get("output_dir") or cfg.paths.output_dir
    result = recover(cfg.input, ground_truth=cfg.get("ground_truth"), output_dir=output_dir,
                     stages_file=cfg.get("stages_file"), seed=int(cfg.get("seed", 0)), **options)
    from common.tracking import log_recovery
    log_recovery(cfg, result)  # metrics, tables and tree.png to the chosen logger (logger=csv|wandb)
    return result


def recover(path: str | Path, *, ground_truth: str | Path | None = None, output_dir: str | Path | None = None,
            stages_file: str | Path | None = None, layers: Mapping | None = None, distance: Mapping | None = None,
            direction: Mapping | None = None, cluster: Mapping | None = None, tree: Mapping | None = None,
            plot: bool = True, seed: int = 0, quiet: bool = False, strict: bool = False,
            device: str = "auto", direct_io: bool = True, candidates: str = "dense", sparse: Mapping | None = None
            ) -> dict[str, Any]:
    """Recover the Model Graph of the models in `path`.

    Args:
        path: folder of models (see recovery.weights.analyze_folder).
        ground_truth: graph JSON to score against, or None.
        output_dir: where tree.json / metrics.json / tree.png go; None writes nothing.
        stages_file: optional id -> stage file (else graph.json stages, else all specialization).
        layers, distance, direction: options passed to recovery.weights (recovery.config: LayersOptions,
            DistanceOptions, DirectionOptions; unset keys take their defaults).
        cluster: {n_trees: "auto" | int | "truth" (the ground truth's trees, as the paper's Table 1), linkage,
            min_gap_ratio, threshold} (recovery.config.ClusterOptions).
        tree: {c: weight of the direction prior, stage_order: penalise specialization -> generalization edges,
            ...} (recovery.config.TreeOptions).
        plot: draw tree.png when writing output.
        seed: the run's seed, recorded (recovery itself is deterministic).
        quiet: do not print the summary.
        strict: any model that cannot be used (unreadable, NaN/Inf, another architecture, a duplicate) is an error;
            by default it is left out with a warning and listed under `excluded` in tree.json.
        device: where the Gram products and rank factorizations run: auto | cpu | cuda (recovery.kernels).
        direct_io: read large uncached tensors with O_DIRECT (recovery.direct_io); False: through the page cache.
        candidates: dense (all pairs) | knn (nearest-neighbour candidate edges, recovery.sparse; l2 and the
            paper's tree only) | auto (knn above `sparse.auto_above` models).
        sparse: recovery.sparse options (knn, pool, project_dim, ...).

    Returns:
        {"tree": tree.json dict, "metrics": metrics dict or None, "paths": {name: file}, "warnings": [...],
        "analysis": the in-memory recovery.weights.WeightAnalysis (None on the knn path), for callers that measure
        more on the same weight pass (never written)}.
    """
    from recovery.weights import analyze_folder, edge_relations  # the weights side (heavy I/O) on first use

    layers = merge_options(LayersOptions, layers, "recovery.layers")
    distance = merge_options(DistanceOptions, distance, "recovery.distance")
    direction = merge_options(DirectionOptions, direction, "recovery.direction")
    cluster = merge_options(ClusterOptions, cluster, "recovery.cluster")
    tree = tree_options(tree)
    truth = load_graph(ground_truth) if ground_truth else None  # fail on a bad ground truth before any reading
    if output_dir is not None:
        check_output_dir(Path(output_dir))                           # and on an output folder it cannot write
    if cluster["n_trees"] == "truth" and truth is None:
        raise ConfigError("recovery.cluster.n_trees=truth (recover each known tree, the paper's Table 1 protocol) "
                          "needs ground_truth=FILE")
    t0 = time.perf_counter()
    knn = _use_knn(path, candidates, sparse, stages_file, strict)
    if knn:   # recovery.sparse: candidate edges from nearest neighbours instead of the dense matrices
        from recovery.sparse_run import recover_folder
        if cluster["n_trees"] == "truth":
            raise ConfigError("recovery.candidates=knn does not support recovery.cluster.n_trees=truth")
        launcher = None
        if int(dict(sparse or {}).get("blocks", 1)) > 1:   # neighbour blocks as an array of the run's launcher
            from data_gen.slurm import launcher_config
            launcher = launcher_config()
        wa, clustering, parent, lambdas, _ = recover_folder(
            path, stages_file=stages_file, layers=layers, distance=distance, direction=direction, cluster=cluster,
            tree=tree, sparse_opts=sparse, strict=strict, launcher=launcher,
            blocks_dir=Path(output_dir) / "knn_blocks" if output_dir is not None else None)
        tree_evidence, missing = {}, []
    else:
        wa = analyze_folder(path, stages_file=stages_file, layers=layers, distance=distance, direction=direction,
                            strict=strict, device=device, direct_io=direct_io)
    t_weights = time.perf_counter() - t0

    if not knn:
        clustering, parent, lambdas, tree_evidence, missing = solve(wa, cluster=cluster, tree=tree, truth=truth,
                                                                    source=ground_truth)
    ids = wa.ids
    edges = [(ids[p], ids[j]) for j, p in enumerate(parent) if p >= 0]
    relations = edge_relations(path, edges, layers=layers, sources=wa.sources, selected=wa.selected,
                               evidence=wa.rank_evidence, rank_tol=distance["rank_tol"]) if edges and not knn else {}
    warnings = list(wa.warnings) + ([clustering.evidence["warning"]] if "warning" in clustering.evidence else [])
    warnings += [f"models {m['models']} share a change that {m['attached_to']} lacks: their true parent is probably "
                 f"missing from the folder (or they are same-recipe siblings); missing edge ~{m['missing_edge_l2']:.3g} "
                 f"l2 from {m['attached_to']}" for m in missing]

    doc = _tree_doc(wa, parent, clustering, lambdas, relations, tree_evidence)
    doc["missing_parents"] = missing
    doc.update(input=str(path), seed=seed, warnings=warnings, timings={"weights_s": t_weights,
               "total_s": time.perf_counter() - t0},
               options={"layers": layers, "distance": distance, "direction": direction, "cluster": cluster,
                        "tree": tree, "candidates": "knn" if knn else "dense", "sparse": dict(sparse or {}),
                        "stages_file": str(stages_file) if stages_file else None, "strict": strict})
    metrics = None
    if truth is not None:
        metrics, eval_warnings = score(wa, edges, clustering.labels.tolist(), truth, ground_truth, cluster)
        warnings += eval_warnings
    for w in warnings:
        log.warning(w)
    paths = write_outputs(Path(output_dir), doc, metrics, plot) if output_dir is not None else {}
    if not quiet:
        print(summary(doc, metrics, paths))
    return {"tree": doc, "metrics": metrics, "paths": paths, "warnings": warnings, "analysis": None if knn else wa}


def score(wa: Any, edges: list[tuple[str, str]], labels: list[int], truth: Any, source: str | Path,
          cluster: Mapping) -> tuple[dict[str, Any], list[str]]:
    """recovery.evaluate's (metrics, warnings) of the recovered edges against `truth` (read from `source`); with the
    known trees handed over (`n_trees=truth`), also the clustering accuracy of a clustering told only their number."""
    metrics, eval_warnings = evaluate(wa.ids, edges, labels, truth)
    metrics["ground_truth"] = str(source)
    if cluster["n_trees"] == "truth":
        from recovery.evaluate import clustering_accuracy
        known_k = cluster_trees(wa.l2, **{**cluster, "n_trees": int(metrics["n_trees_true"])})
        metrics["clustering_accuracy_known_k"] = clustering_accuracy(
            wa.ids, known_k.labels.tolist(), truth.roots())["clustering_accuracy"]
    return metrics, eval_warnings


def write_outputs(out: Path, doc: dict, metrics: dict | None, plot: bool) -> dict[str, str]:
    """tree.json (and its exports), metrics.json and tree.png into `out`; an earlier run's file that this run does
    not write is removed, so it cannot be read as this run's. Returns {name: path}."""
    from recovery.export import write_exports

    paths: dict[str, str] = {}
    for stale in ({"metrics.json"} if metrics is None else set()) | (set() if plot else {"tree.png"}):
        if (out / stale).is_file():
            (out / stale).unlink()
            log.warning(f"{out / stale}: removed, an earlier run's output (this run writes none)")
    record = jsonable(doc)
    paths["tree"] = str(write_json(out / "tree.json", record))
    paths.update(write_exports(record, out))
    if metrics is not None:
        paths["metrics"] = str(write_json(out / "metrics.json", jsonable(metrics)))
    if plot:
        from recovery.plot import plot_tree
        paths["plot"] = str(plot_tree(doc, out / "tree.png", metrics))
    return paths


def check_output_dir(out: Path) -> None:
    """A ConfigError unless recovery can write OUTPUTS into folder `out` (checked before reading any weights;
    nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out}: exists and is not a folder")
    taken = [name for name in OUTPUTS if (out / name).exists() and not (out / name).is_file()]
    if taken:
        raise ConfigError(f"output_dir={out}: {taken} exist there and are not files; recovery writes {list(OUTPUTS)}")
    parent = next((d for d in [out, *out.parents] if d.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={out}: cannot create or write it ({parent} is not a writable folder)")


def _use_knn(path: str | Path, candidates: str, sparse: Mapping | None, stages_file: Any, strict: bool) -> bool:
    """Whether this run takes the sparse path (recovery.candidates); `auto` counts the models first."""
    from recovery.sparse import sparse_options, use_knn

    opts = sparse_options(dict(sparse or {}))
    if candidates != "auto" or not Path(path).is_dir():   # auto never downloads to count (hub id lists: dense)
        return use_knn(candidates if candidates != "auto" else "dense", 0, opts["auto_above"])
    from recovery.checkpoints import discover
    return use_knn(candidates, len(discover(path, stages_file, strict=strict).models), opts["auto_above"])


def solve(wa: Any, *, cluster: Mapping, tree: Mapping, truth: Any = None, source: Any = None,
          labels: np.ndarray | None = None) -> SolveResult:
    """Clusters and parents from a WeightAnalysis (the part of `recover` after reading the weights).

    `labels` fixes the clusters (experiments that subsample or sweep reuse one clustering); else `cluster` decides.
    """
    cluster = merge_options(ClusterOptions, cluster, "recovery.cluster")
    tree = tree_options(tree)
    if labels is not None:
        labels = np.asarray(labels)
        clustering = Clustering(labels, int(labels.max()) + 1, {"rule": "labels given"})
    elif cluster["n_trees"] == "truth":
        clustering = truth_clusters(wa.ids, truth, source)
    else:
        clustering = cluster_trees(wa.l2, **cluster)
    generalization = np.array([wa.stages[i] == "generalization" for i in wa.ids])
    tree_evidence: dict[int, dict] = {}
    lambdas: dict[int, float] = {}
    if tree["orient"] == "root":
        per_layer = dict(wa.cues) if wa.cues else {wa.direction_stat: wa.direction_per_layer}
        parent, tree_evidence = recover_forest_rooted(wa.distance, wa.sq_l2, per_layer, generalization,
                                                      clustering.labels, wa.direction, tree, ties=wa.ties)
    else:
        parent, lambdas = recover_forest(wa.distance, wa.direction, generalization, clustering.labels,
                                         c=tree["c"], stage_order=bool(tree["stage_order"]), ties=wa.ties)
    missing = []
    if tree["missing"]:
        from recovery.orient import missing_parents
        tau = tree["sibling_tau"] if tree["missing_siblings"] else None
        for m in missing_parents(parent, wa.sq_l2, tree["missing_ratio"], tree["missing_min_shared"], tau):
            missing.append({**m, "attached_to": wa.ids[m["attached_to"]], "models": [wa.ids[j] for j in m["models"]]})
    return SolveResult(clustering, parent, lambdas, tree_evidence, missing)


def truth_clusters(ids: list[str], truth: Any, source: Any) -> Any:
    """The ground truth's trees as the clustering (the paper recovers each already-clustered tree on its own)."""
    root_of = truth.roots()
    missing = [i for i in ids if i not in root_of]
    if missing:
        raise InputError(f"{source}: n_trees=truth, but models {missing[:5]} are not in the ground truth")
    order: dict[str, int] = {}
    labels = np.array([order.setdefault(root_of[i], len(order)) for i in ids])
    return Clustering(labels, len(order), {"rule": "n_trees=truth: the ground truth's trees (paper protocol)",
                                           "sizes": np.bincount(labels).tolist()})


def _tree_doc(wa: Any, parent: np.ndarray, clustering: Any, lambdas: dict[int, float],
              relations: Mapping[tuple[str, str], str], tree_evidence: Mapping[int, dict] | None = None) -> dict:
    """The tree.json dict (see docs/DESIGN.md) from the analysis and the recovered parent array."""
    from recovery.export import SCHEMA_VERSION, model_card_lines

    ids = wa.ids
    depth = depths(parent)
    ties = wa.ties
    nodes, edges = [], []
    for j, node in enumerate(ids):
        entry = {"id": node, "ids": [node, *wa.aliases.get(node, [])], "cluster": int(clustering.labels[j]),
                 "direction_score": float(wa.direction[j]), "stage": wa.stages[node], "root": bool(parent[j] < 0),
                 "depth": int(depth[j]), "direction_per_layer": np.asarray(wa.direction_per_layer[j]).tolist()}
        if ties is not None and ties.groups[j] >= 0:
            entry.update(tie_group=int(ties.groups[j]), tie_score=float(ties.score[j]))
        if parent[j] >= 0:
            edge = (ids[parent[j]], node)
            entry.update(base_model=edge[0], base_model_relation=relations.get(edge, "finetune"))
            edges.append({"parent": edge[0], "child": node, "distance": float(wa.distance[parent[j], j]),
                          "l2": float(wa.l2[parent[j], j]), "base_model_relation": entry["base_model_relation"]})
        entry["model_card"] = model_card_lines(entry)
        nodes.append(entry)
    trees = []
    for k in range(clustering.n_clusters):
        members = np.flatnonzero(clustering.labels == k)
        roots = [ids[j] for j in members if parent[j] < 0]
        entry = {"cluster": k, "root": roots[0], "size": len(members), "depth": int(depth[members].max()),
                 "lambda": lambdas.get(k, 0.0)}
        if tree_evidence and k in tree_evidence:
            ev = dict(tree_evidence[k])
            for move in ev.get("sibling_moves", []):
                move.update({key: ids[move[key]] for key in ("node", "from", "to")})
            entry["orientation"] = ev
        trees.append(entry)
    return {"schema_version": SCHEMA_VERSION, "nodes": nodes, "edges": edges, "trees": trees,
            "distance_metric": wa.distance_metric, "direction_stat": wa.direction_stat,
            "direction_layers": list(wa.direction_layers), "layers": list(wa.layers),
            "layer_selection": dict(wa.layer_selection), "dropped": dict(wa.dropped), "excluded": dict(wa.excluded),
            "aliases": dict(wa.aliases), "clustering": clustering.evidence, "info": wa.info,
            "direction_ties": ties_record(ties, ids)}


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
