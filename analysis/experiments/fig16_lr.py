"""Fig. 16 (Appendix D.3): the direction score along fine-tuning for a sweep of learning rates.

One built-in root is fine-tuned on one built-in task (the paper: CIFAR-100, 10 epochs) with `seeds` seeds per
learning rate, with checkpoints. A run whose validation accuracy stays below chance + `min_gain` x (1 - chance)
(chance = 1 / number of classes) is marked as not converged (the paper: 5e-3 and 1e-2, accuracy < 20% on CIFAR-100);
the paper finds the score monotone for every converged run and not for the non-converged ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.finetunes import analysis_cache, finetune_run
from analysis.report import plot_panels
from analysis.trajectories import series_stats, trajectory_files
from analysis.trends import EXPECTED, trend, trend_rows
from common.io import jsonable
from common.seed import derive_seed

NAME = "fig16_lr"


def compute(cfg: DictConfig) -> dict:
    """Fine-tune (cached) every (lr, seed); the score per checkpoint, the trend and accuracy per run."""
    k = report.knobs(cfg, NAME)
    cache = analysis_cache(cfg, str(k.cache))
    stat, kinds = str(k.stat), list(k.kinds)
    sign = EXPECTED["specialization"]
    series = []
    for lr in [float(x) for x in k.lrs]:
        for i in range(int(k.seeds)):
            recipe = {**jsonable(k.recipe), "lr": lr, "seed": derive_seed(cfg.seed, NAME, f"{lr:g}", i)}
            run = finetune_run(cfg, cache, root=str(k.root), task=str(k.task), recipe=recipe,
                               image_size=int(k.image_size), data_seed=derive_seed(cfg.seed, "data", str(k.task)),
                               checkpoint_every=int(k.checkpoint_every))
            steps, files = trajectory_files(run)
            values = series_stats(files, stats=[stat], kinds=kinds, layers=dict(k.get("layers") or {}))[stat]
            score = np.sum([values[kind] for kind in kinds], axis=0).tolist()
            chance = 1.0 / run["num_classes"]
            acc = float(run["val_accuracy"])
            converged = acc >= chance + float(k.min_gain) * (1.0 - chance)
            series.append({"panel": f"lr={lr:g}", "lr": lr, "seed_index": i, "seed": recipe["seed"],
                           "label": f"seed {i} (acc {acc:.2f})", "steps": steps, "values": score, "sign": sign,
                           "val_accuracy": acc, "chance": chance, "converged": converged, "dashed": not converged,
                           "trend": trend(steps, score, sign)})
    return {"stat": stat, "kinds": kinds, "root": str(k.root), "task": str(k.task),
            "lrs": [float(x) for x in k.lrs], "min_gain": float(k.min_gain), "series": series,
            "by_lr": by_lr(series)}


def by_lr(series: list[dict]) -> list[dict]:
    """Per learning rate: runs, converged runs, mean accuracy, mean Spearman, runs trending down."""
    rows = []
    for lr in sorted({s["lr"] for s in series}, reverse=True):
        mine = [s for s in series if s["lr"] == lr]
        rhos = [s["trend"]["spearman"] for s in mine if s["trend"]["spearman"] is not None]
        fracs = [s["trend"]["monotone_fraction"] for s in mine if s["trend"]["monotone_fraction"] is not None]
        rows.append({"lr": lr, "runs": len(mine), "converged": sum(s["converged"] for s in mine),
                     "mean_val_acc": float(np.mean([s["val_accuracy"] for s in mine])),
                     "mean_spearman": float(np.mean(rhos)) if rhos else None,
                     "mean_monotone_frac": float(np.mean(fracs)) if fracs else None,
                     "trend_down": sum(bool(s["trend"]["agrees"]) for s in mine)})
    return rows


def render(results: dict, out_dir: Path) -> None:
    """fig16_lr.png (one panel per lr; non-converged runs dashed) and the tables."""
    import pandas as pd

    panels = [f"lr={lr:g}" for lr in sorted(results["lrs"])]
    titles = {}
    for row in results["by_lr"]:
        p = f"lr={row['lr']:g}"
        titles[p] = f"{p}: {row['converged']}/{row['runs']} converged" + (
            "" if row["converged"] == row["runs"] else " (dashed: not)")
    fig = plot_panels(results["series"], panels, titles=titles, ncols=min(3, len(panels)),
                      ylabel=f"{results['stat']} score (sum over {'+'.join(results['kinds'])} layers)")
    report.save_figure(fig, out_dir, NAME)
    report.write_table(pd.DataFrame(results["by_lr"]), out_dir, NAME, float_fmt="{:.3g}",
                       caption=f"Fig. 16: direction score vs learning rate ({results['root']} on {results['task']}); "
                               f"converged = val accuracy >= chance + {results['min_gain']} x (1 - chance); trend_down = "
                               "runs whose score falls with the step (Spearman rho < 0)")
    rows = trend_rows(results["series"], keys=("panel", "seed_index", "val_accuracy", "converged"))
    report.write_table(rows, out_dir, f"{NAME}_runs", caption="Fig. 16: every run")


def _moved(s: dict) -> float:
    """The score's change over the run, relative to where it started."""
    t = s["trend"]
    return (t["last"] - t["first"]) / abs(t["first"]) if t["first"] else float("nan")


def against_the_trend(converged: list[dict]) -> str:
    """Why converged runs fail to trend down, in their own numbers: how far each one's score moved, against the
    median fall of the converged runs that do trend down (a score that hardly moves has no direction to show)."""
    falling = [abs(_moved(s)) for s in converged if s["trend"]["agrees"]]
    median = float(np.median(falling)) if falling else float("nan")
    parts = [f"lr {s['lr']:g} seed {s['seed_index']} (val acc {s['val_accuracy']:.2f}) moved its score by "
             f"{_moved(s):+.3%} over the run" for s in converged if not s["trend"]["agrees"]]
    return "; ".join(parts) + f", against a median fall of {median:.2%} in the converged runs that trend down"


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    conv = [s for s in results["series"] if s["converged"]]
    bad = [s for s in results["series"] if not s["converged"]]
    down = sum(bool(s["trend"]["agrees"]) for s in conv)
    not_conv_lrs = sorted({s["lr"] for s in bad}, reverse=True)
    ours = (f"{down}/{len(conv)} converged runs have a falling score (Spearman < 0); "
            f"non-converged runs: {len(bad)} (lrs {', '.join(f'{x:g}' for x in not_conv_lrs) or 'none'})")
    plain = "" if down == len(conv) else (
        f" Unlike the paper, {len(conv) - down} converged run{'s do' if len(conv) - down > 1 else ' does'} not "
        f"trend down: {against_the_trend(conv)}.")
    return {"title": "Fig. 16: direction score along fine-tuning for learning rates 1e-2 .. 1e-6",
            "paper": "monotone for all converged runs; not for 5e-3 and 1e-2 (accuracy < 20%, not converged)",
            "ours": ours, "notes": "Built-in tiny root and task, fewer epochs than the paper." + plain}


@experiment(NAME, order=140)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
