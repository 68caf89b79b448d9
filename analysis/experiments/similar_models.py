"""Robustness to similar models (paper 6.4): siblings fine-tuned with one recipe and different seeds.

From each parent (a built-in root), `siblings` models are fine-tuned with an identical recipe (same task, lr,
epochs) and seeds derived from (seed, experiment, parent, index). We report the paper's l2 distance (Eq. 1,
`recovery.weights.analyze_folder`) between siblings and between parent and child, and run MoTHer recovery on
all parents and siblings together (options: `cfg.recovery` with this experiment's `recovery` overrides; the
number of trees given, as in the paper) to see whether every sibling is placed under its parent. The paper: in all 3 cases the sibling distance
is greater than the parent distance, and the tree is recovered.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.finetunes import analysis_cache, finetune_run, node_name
from analysis.graphs import graph_folder
from common.io import jsonable
from common.paths import portable
from common.seed import derive_seed

NAME = "similar_models"


def build(cfg: DictConfig, k) -> tuple[Path, dict[str, list[str]]]:
    """Fine-tune (cached) the siblings of every parent; return the graph folder and parent -> sibling ids."""
    cache = analysis_cache(cfg, str(k.cache))
    models, edges, meta, family = {}, [], {}, {}
    for p, root in enumerate(k.parents):
        task = str(k.tasks[p % len(k.tasks)])
        parent = node_name(root)
        family[parent] = []
        for i in range(int(k.siblings)):
            recipe = {**jsonable(k.recipe), "seed": derive_seed(cfg.seed, NAME, root, i)}
            run = finetune_run(cfg, cache, root=str(root), task=task, recipe=recipe, image_size=int(k.image_size),
                               data_seed=derive_seed(cfg.seed, "data", task), checkpoint_every=None)
            child = f"{parent}-sib{i}"
            models[parent] = run["init_file"]
            models[child] = run["weights"]
            edges.append((parent, child))
            meta[child] = {"task": task, "seed": recipe["seed"], "val_accuracy": run["val_accuracy"],
                           "source": run["node_id"]}
            family[parent].append(child)
    digest = hashlib.sha256(json.dumps(sorted(models.items())).encode()).hexdigest()[:8]
    return graph_folder(cache / "sets" / digest, models, edges, meta), family


def compute(cfg: DictConfig) -> dict:
    """Sibling-sibling and parent-child l2 distances per parent; recovery accuracy on the whole set."""
    from analysis.recover import analysis_stages, analyze, forest, recovery_options
    from recovery.evaluate import load_graph

    k = report.knobs(cfg, NAME)
    folder, family = build(cfg, k)
    options = recovery_options(cfg, k.get("recovery"))
    wa = analyze(folder, options, stages=analysis_stages(cfg))
    idx = {m: i for i, m in enumerate(wa.ids)}
    per_parent = []
    for parent, sibs in family.items():
        pc = [float(wa.l2[idx[parent], idx[s]]) for s in sibs]
        ss = [float(wa.l2[idx[a], idx[b]]) for a, b in itertools.combinations(sibs, 2)]
        per_parent.append({"parent": parent, "siblings": len(sibs), "parent_child_l2_mean": float(np.mean(pc)),
                           "parent_child_l2_max": max(pc), "sibling_l2_mean": float(np.mean(ss)),
                           "sibling_l2_min": min(ss), "ratio_min_sib_over_max_pc": min(ss) / max(pc),
                           "siblings_farther": bool(min(ss) > max(pc))})
    cluster = {**options["cluster"], "n_trees": len(family)} if k.trees_known else options["cluster"]
    rec = forest(wa, load_graph(folder / "graph.json"), cluster=cluster, tree=options["tree"])
    m = rec["metrics"]
    for row in per_parent:
        row["recovery_accuracy"] = m["per_tree"].get(row["parent"], {}).get("accuracy")
    return {"distance": "l2 (paper Eq. 1) on the layers of recovery.layers", "per_parent": per_parent,
            "recovery_metric": wa.distance_metric, "edge_accuracy": m["edge_accuracy"],
            "clustering_accuracy": m["clustering_accuracy"], "recovered_edges": [list(e) for e in rec["edges"]],
            "folder": portable(folder), "recipe": jsonable(k.recipe), "tasks": [str(t) for t in k.tasks],
            "stages": analysis_stages(cfg)}


def render(results: dict, out_dir: Path) -> None:
    """The per-parent distance table and its figure (no figure in the paper): per parent, its farthest child and its
    closest sibling pair, with the means beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(results["per_parent"])
    report.write_table(df, out_dir, NAME, float_fmt="{:.4g}",
                       caption="Similar models: siblings fine-tuned with one recipe and different seeds; l2 "
                               "distances (paper Eq. 1) sibling-sibling vs parent-child, and MoTHer's edge "
                               f"accuracy per tree (whole set: {report.format_cell(results['edge_accuracy'])})")
    rows = results["per_parent"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 3.4), layout="constrained")
    width = 0.38
    for shift, bar, mean, label, color in (
            (-width / 2, "parent_child_l2_max", "parent_child_l2_mean", "parent-child (bar: max, dot: mean)", "C0"),
            (width / 2, "sibling_l2_min", "sibling_l2_mean", "sibling-sibling (bar: min, dot: mean)", "C1")):
        xs = np.arange(len(rows)) + shift
        ax.bar(xs, [r[bar] for r in rows], width, color=color, label=label)
        ax.plot(xs, [r[mean] for r in rows], "o", color="k", markersize=3)
    ax.set_xticks(range(len(rows)), [f"{r['parent']} ({r['siblings']} siblings)" for r in rows], fontsize=8)
    ax.set_ylabel("l2 distance (paper Eq. 1)")
    ax.set_title(f"Similar models: siblings vs parent (edge accuracy {report.format_cell(results['edge_accuracy'])})",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    report.save_figure(fig, out_dir, NAME)


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    rows = results["per_parent"]
    farther = sum(r["siblings_farther"] for r in rows)
    ours = (f"sibling distance > parent distance for {farther}/{len(rows)} parents (min ratio "
            f"{min(r['ratio_min_sib_over_max_pc'] for r in rows):.2f}); recovery edge accuracy "
            f"{report.format_cell(results['edge_accuracy'])}")
    plain = ("As in the paper, siblings are farther apart than from their parent."
             if farther == len(rows) else
             f"Unlike the paper, for {len(rows) - farther} parents a sibling pair is closer than a parent-child pair.")
    return {"title": "Similar models: identical recipe, different seeds",
            "paper": "sibling distance > parent distance in all 3 cases; the tree is recovered",
            "ours": ours, "notes": "Built-in tiny roots and tasks. " + plain}


@experiment(NAME, order=90, recovers=True)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
