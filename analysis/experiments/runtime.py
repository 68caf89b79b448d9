"""Table 7: running time of the pairwise distances (CPU; GPU when torch.cuda is available), the clustering and
the per-tree MDST for 10 / 100 / 1k / 10k models, on one ViT-B-sized layer.

Weights are synthetic (timing does not depend on their values): `trees` random roots, every model a root plus
a small random delta. Each model's layer is flattened; when n models would exceed `max_gib` of float32 the
layer is cut to fewer values (recorded per size), so the 10k column fits in this machine's memory. The CPU
distances are recovery's own Gram-matrix l2 (`recovery.distances.pairwise_sq_dists`), the clustering
recovery's `cluster_trees` (scipy, number of trees given), the MDST recovery's `recover_forest` per cluster.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.report import knobs, run_experiment, save_figure, write_table
from common.seed import derive_seed

NAME = "runtime"
PAPER = {"Pairwise distances (CPU)": {10: 0.033, 100: 0.504, 1000: 5.468, 10000: 5.01 * 60},
         "Pairwise distances (GPU)": {10: 0.1, 100: 0.697, 1000: 0.005, 10000: 34.742},
         "Clustering (CPU)": {10: 0.011, 100: 0.001, 1000: 0.134, 10000: 4.43 * 60}}


def synthetic_layer(n: int, p: int, trees: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, p) float32 weights of `trees` families (root + 10% delta) and each model's family label."""
    rng = np.random.default_rng(seed)
    roots = (rng.standard_normal((trees, p), dtype=np.float32) * 0.02)
    labels = np.arange(n) % trees
    x = np.empty((n, p), dtype=np.float32)
    for s in range(0, n, 256):
        e = min(n, s + 256)
        x[s:e] = roots[labels[s:e]] + rng.standard_normal((e - s, p), dtype=np.float32) * 0.002
    return x, labels


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gpu_distances(x: np.ndarray, repeats: int) -> float | None:
    """Seconds for torch.cdist on the GPU (after one warm-up, data already on the device); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    xg = torch.from_numpy(x).cuda()

    def run() -> None:
        torch.cdist(xg, xg)
        torch.cuda.synchronize()
    run()
    return _timed(run, repeats)[0]


def compute(cfg: DictConfig) -> dict:
    from recovery.cluster import cluster_trees
    from recovery.distances import pairwise_sq_dists
    from recovery.mother import recover_forest

    k = knobs(cfg, NAME)
    rows_, cols_ = (int(v) for v in k.layer)
    full = rows_ * cols_
    rows = []
    for n in [int(s) for s in k.sizes]:
        p = min(full, int(float(k.max_gib) * 2**30 // (4 * n)))
        x, labels = synthetic_layer(n, p, int(k.trees), derive_seed(cfg.seed, NAME, n))
        reps = int(k.repeats) if n <= int(k.repeat_up_to) else 1
        t_dist, d2 = _timed(lambda: pairwise_sq_dists(x), reps)
        dist = np.sqrt(d2)
        t_gpu = gpu_distances(x, reps) if k.gpu else None
        del x
        t_clu, clu = _timed(lambda: cluster_trees(dist, n_trees=int(k.trees)), reps)
        direction = np.random.default_rng(derive_seed(cfg.seed, NAME, "k", n)).standard_normal(n)
        t_mdst, _ = _timed(lambda: recover_forest(dist, direction, np.zeros(n, bool), clu.labels), reps)
        pure = float(np.mean([len(set(labels[clu.labels == c])) == 1 for c in range(clu.n_clusters)]))
        rows.append({"models": n, "values per model": p, "layer values": full, "repeats": reps,
                     "distances_cpu_s": t_dist, "distances_gpu_s": t_gpu, "clustering_s": t_clu,
                     "mdst_s": t_mdst, "clusters_pure": pure})
    return {"layer": [rows_, cols_], "cpu_count": os.cpu_count(), "max_gib": float(k.max_gib), "rows": rows}


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.2f} min" if seconds >= 60 else f"{seconds:.3f} s"


def render(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    rows = results["rows"]
    what = {"Pairwise distances (CPU)": "distances_cpu_s", "Pairwise distances (GPU)": "distances_gpu_s",
            "Clustering (CPU)": "clustering_s", "MDST, all trees (CPU)": "mdst_s"}
    table = []
    for label, key in what.items():
        table.append({"step": f"{label} ours", **{f"{r['models']} models": _fmt(r[key]) for r in rows}})
        if label in PAPER:
            table.append({"step": f"{label} paper", **{f"{r['models']} models": _fmt(PAPER[label].get(r["models"]))
                                                    for r in rows}})
    table.append({"step": "values per model used", **{f"{r['models']} models": f"{r['values per model']:,}"
                                                    for r in rows}})
    write_table(pd.DataFrame(table), out_dir, NAME, caption=f"Running time on one {results['layer'][0]}x"
                f"{results['layer'][1]} layer (synthetic weights; {results['cpu_count']} CPU cores)")
    write_table(pd.DataFrame(rows), out_dir, f"{NAME}_seconds", caption="Running times in seconds",
                float_fmt="{:.4g}")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    n = [r["models"] for r in rows]
    for label, key in what.items():
        ys = [r[key] for r in rows]
        if any(y is not None for y in ys):
            ax.plot(n, [np.nan if y is None else y for y in ys], "-o", ms=4, label=f"{label}, ours")
    for label, vals in PAPER.items():
        ax.plot(list(vals), list(vals.values()), "--", alpha=0.5, label=f"{label}, paper")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of models")
    ax.set_ylabel("time (s)")
    ax.set_title("Running time vs Model Graph size")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, NAME)


def describe(results: dict) -> dict:
    rows = results["rows"]
    ours = "; ".join(f"{r['models']} models: distances {_fmt(r['distances_cpu_s'])}, clustering "
                     f"{_fmt(r['clustering_s'])}, MDST {_fmt(r['mdst_s'])}" for r in rows)
    cut = [r["models"] for r in rows if r["values per model"] < r["layer values"]]
    notes = ("Times are machine-dependent; compare the growth with n, not the absolute numbers. "
             + (f"For {cut} models the layer was cut to fit {results['max_gib']} GiB (values per model in the "
                "table), so those times are lower bounds for the full layer. " if cut else "")
             + ("No GPU here: the GPU row is n/a." if all(r["distances_gpu_s"] is None for r in rows) else ""))
    return {"title": "Table 7: running time", "ours": ours, "notes": notes,
            "paper": "CPU distances 0.033 s / 0.504 s / 5.468 s / 5.01 min; GPU 0.1 s / 0.697 s / 0.005 s / "
                     "34.7 s; clustering 0.011 s / 0.001 s / 0.134 s / 4.43 min (10 / 100 / 1k / 10k models)"}


@experiment(NAME, order=160)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
