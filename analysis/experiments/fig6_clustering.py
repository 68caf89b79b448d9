"""Fig. 6: clustering accuracy vs number of models. Random subsets of a 5-tree graph (every tree present),
clustered on the l2 distances with the number of trees known (the paper) and found automatically; each size
repeated with seeded draws. The paper: high accuracy down to 10 models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.graphs import read_graph, resolve_graph
from analysis.recover import analyze, recovery_options
from analysis.report import knobs, run_experiment, save_figure, write_table
from common.seed import derive_seed

NAME = "fig6_clustering"


def draw(rng: np.random.Generator, tree_of: np.ndarray, size: int, tries: int = 1000) -> np.ndarray | None:
    """`size` distinct indices with every tree present (None when no draw in `tries` has all of them)."""
    k = len(np.unique(tree_of))
    for _ in range(tries):
        idx = np.sort(rng.choice(len(tree_of), size=size, replace=False))
        if len(np.unique(tree_of[idx])) == k:
            return idx
    return None


def panel(cfg: DictConfig, spec: DictConfig, label: str, sizes: list[int], repeats: int, modes: list) -> dict:
    from recovery.cluster import cluster_trees
    from recovery.evaluate import clustering_accuracy

    graph_dir = resolve_graph(cfg, spec.graph)
    graph = read_graph(graph_dir)
    opts = recovery_options(cfg, spec.get("recovery"))
    wa = analyze(graph_dir, opts)
    parent = {c: p for p, c in graph["edges"]}

    def top(n: str) -> str:
        while n in parent:
            n = parent[n]
        return n
    root_of = {n: top(n) for n in wa.ids}
    roots = sorted(set(root_of.values()))
    tree_of = np.array([roots.index(root_of[n]) for n in wa.ids])
    cluster_opts = {k: v for k, v in opts["cluster"].items() if k != "n_trees"}
    rows = []
    for size in sizes:
        if size > len(wa.ids) or size < len(roots):
            continue
        for mode in modes:
            accs = []
            for r in range(repeats):
                rng = np.random.default_rng(derive_seed(cfg.seed, NAME, label, size, r))
                idx = draw(rng, tree_of, size)
                if idx is None:
                    continue
                n_trees = len(roots) if mode == "known" else "auto"
                c = cluster_trees(wa.l2[np.ix_(idx, idx)], n_trees=n_trees, **cluster_opts)
                ids = [wa.ids[i] for i in idx]
                accs.append(clustering_accuracy(ids, c.labels.tolist(), root_of)["clustering_accuracy"])
            if accs:
                rows.append({"models": size, "n_trees": mode, "draws": len(accs), "mean": float(np.mean(accs)),
                             "std": float(np.std(accs)), "min": float(np.min(accs)),
                             "perfect": float(np.mean(np.isclose(accs, 1.0)))})
    return {"graph": graph_dir.name, "n_models": len(wa.ids), "n_trees": len(roots), "rows": rows}


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    sizes, modes = [int(s) for s in k.sizes], list(k.modes)
    return {"repeats": int(k.repeats), "panels": {label: panel(cfg, spec, label, sizes, int(k.repeats), modes)
                                                  for label, spec in k.panels.items()}}


def render(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    panels = results["panels"]
    frame = pd.DataFrame([{"graph": label, **row} for label, p in panels.items() for row in p["rows"]])
    write_table(frame, out_dir, NAME, caption=f"Clustering accuracy of random subsets ({results['repeats']} "
                "seeded draws per size, every tree present): mean, std, worst, fraction perfect")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (label, p) in zip(axes[0], panels.items()):
        df = pd.DataFrame(p["rows"])
        for mode, g in df.groupby("n_trees") if len(df) else []:
            ax.plot(g["models"], g["mean"], "-o", ms=4, label=f"number of trees {mode}")
            ax.fill_between(g["models"], g["mean"] - g["std"], (g["mean"] + g["std"]).clip(upper=1), alpha=0.2)
        ax.set_xlabel("number of models in the Model Graph")
        ax.set_ylabel("clustering accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{label} ({p['n_trees']} trees)")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Clustering robustness to small Model Graphs (mean ± std)")
    save_figure(fig, out_dir, NAME)


def describe(results: dict) -> dict:
    parts, notes = [], []
    for label, p in results["panels"].items():
        rows = [r for r in p["rows"] if r["n_trees"] == "known"] or p["rows"]
        if not rows:
            continue
        small = min(rows, key=lambda r: r["models"])
        parts.append(f"{label}: {small['mean']:.3f} ± {small['std']:.3f} at {small['models']} models "
                     f"({small['n_trees']} number of trees)")
        notes.append(f"{label} smallest size {'keeps' if small['mean'] >= 0.9 else 'does NOT keep'} "
                     "high (>= 0.9) accuracy")
    return {"title": "Fig. 6: clustering accuracy vs number of models", "ours": "; ".join(parts),
            "paper": "high clustering accuracy even at 10 models from 5 trees", "notes": "; ".join(notes)}


@experiment(NAME, order=70)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
