"""Fig. 2: the kurtosis direction score (paper Eq. 3) along pre-training (generalization) and fine-tuning
(specialization).

Left panel: each built-in root's pre-training checkpoints (kept by data_gen.roots). Right panel: each root
fine-tuned on a built-in task with checkpoints (`analysis.trajectories.root_trajectories`, shared with Fig. 8
and 13). The score is the per-layer kurtosis summed over the configured layer kinds (paper: dense layers).
The paper reports it (almost) monotone in both stages: rising in generalization, falling in specialization.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.finetunes import node_name
from analysis.report import plot_panels
from analysis.trajectories import root_trajectories, series_stats
from analysis.trends import EXPECTED, trend, trend_rows

NAME = "fig2_direction"
PANELS = ("generalization", "specialization")


def pretraining_series(cfg: DictConfig, root: str, folders: dict | None = None) -> tuple[list[int], list[str]]:
    """(steps, files) of a root's pre-training checkpoints.

    A root listed in `folders` (root spec -> folder of step_<k>.safetensors) is read from there; a built-in
    root's checkpoints come from data_gen.roots (built with the root if missing).
    """
    from analysis.finetunes import checkpoint_series, roots_cache

    if folders and str(root) in folders:
        pairs = checkpoint_series(folders[str(root)])
        return [s for s, _ in pairs], [str(p) for _, p in pairs]
    if not str(root).startswith("builtin:"):
        raise ValueError(f"{root}: pre-training checkpoints exist only for built-in roots ('builtin:<name>'); "
                         f"list a folder for it in analysis.{NAME}.pretraining")
    from data_gen import roots

    pairs = roots.root_checkpoints(str(root).removeprefix("builtin:"), cache_dir=roots_cache(cfg),
                                   data_dir=cfg.paths.data_dir, num_threads=cfg.get("num_threads"))
    return [int(s) for s, _ in pairs], [str(p) for _, p in pairs]


def compute(cfg: DictConfig) -> dict[str, Any]:
    """Direction score per checkpoint for both stages; a trend summary per trajectory."""
    k = report.knobs(cfg, NAME)
    stat, kinds = str(k.stat), list(k.kinds)
    layers = dict(k.get("layers") or {})
    series = []
    folders = dict(k.get("pretraining") or {})
    for root in report.knobs(cfg, "trajectory").roots:
        steps, files = pretraining_series(cfg, str(root), folders)
        values = series_stats(files, stats=[stat], kinds=kinds, layers=layers)[stat]
        score = np.sum([values[kind] for kind in kinds], axis=0).tolist()
        series.append({"panel": "generalization", "label": node_name(root), "root": str(root), "task": "pretrain",
                       "steps": steps, "values": score, "sign": EXPECTED["generalization"],
                       "trend": trend(steps, score, EXPECTED["generalization"])})
    for run in root_trajectories(cfg):
        values = series_stats(run["files"], stats=[stat], kinds=kinds, layers=layers)[stat]
        score = np.sum([values[kind] for kind in kinds], axis=0).tolist()
        steps = run["steps_list"]
        series.append({"panel": "specialization", "label": f"{node_name(run['root'])} -> {node_name(run['task'])}",
                       "root": run["root"], "task": run["task"], "steps": steps, "values": score,
                       "sign": EXPECTED["specialization"], "val_accuracy": run.get("val_accuracy"),
                       "trend": trend(steps, score, EXPECTED["specialization"])})
    return {"stat": stat, "kinds": kinds, "series": series, "summary": summarize(series)}


def summarize(series: list[dict]) -> dict[str, dict[str, Any]]:
    """Per panel: number of trajectories, mean monotone fraction, Spearman range, how many trend as expected."""
    out = {}
    for panel in PANELS:
        ts = [s["trend"] for s in series if s["panel"] == panel]
        rhos = [t["spearman"] for t in ts if t["spearman"] is not None]
        fracs = [t["monotone_fraction"] for t in ts if t["monotone_fraction"] is not None]
        out[panel] = {"trajectories": len(ts), "agree": sum(bool(t["agrees"]) for t in ts),
                      "mean_monotone_fraction": float(np.mean(fracs)) if fracs else None,
                      "min_abs_spearman": float(min(abs(r) for r in rhos)) if rhos else None,
                      "mean_spearman": float(np.mean(rhos)) if rhos else None}
    return out


def render(results: dict, out_dir: Path) -> None:
    """fig2_direction.png (two panels) and the trend table."""
    kinds = "+".join(results["kinds"])
    titles = {"generalization": "pre-training (generalization)", "specialization": "fine-tuning (specialization)"}
    fig = plot_panels(results["series"], PANELS, ylabel=f"{results['stat']} score (sum over {kinds} layers)",
                      titles=titles)
    report.save_figure(fig, out_dir, NAME)
    report.write_table(trend_rows(results["series"]), out_dir, NAME,
                       caption=f"Fig. 2: {results['stat']} direction score along training; monotone_frac = "
                               "fraction of checkpoint-to-checkpoint steps in the expected direction, "
                               "spearman_rho = rank correlation with the training step")


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    parts, plain = [], []
    for panel in PANELS:
        s = results["summary"][panel]
        if not s["trajectories"]:
            continue
        parts.append(f"{panel}: {s['agree']}/{s['trajectories']} trajectories trend as expected "
                     f"(mean Spearman {report.format_cell(s['mean_spearman'])}, mean monotone fraction "
                     f"{report.format_cell(s['mean_monotone_fraction'])})")
        if s["agree"] < s["trajectories"]:
            plain.append(f"in {panel} {s['trajectories'] - s['agree']} trajectories do not trend as the paper's do")
    notes = ("Built-in tiny roots and tasks, not the paper's ViT-B roots. " +
             ("; ".join(plain) + "." if plain else "Every trajectory trends in the paper's direction."))
    return {"title": "Fig. 2: direction score during pre-training and fine-tuning",
            "paper": "kurtosis score almost monotonic: rises during pre-training, falls during fine-tuning",
            "ours": "; ".join(parts), "notes": notes}


@experiment(NAME, order=60)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
