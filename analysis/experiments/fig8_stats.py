"""Fig. 8: other direction scores (variance, skewness, kurtosis, entropy) along fine-tuning.

Each built-in root is fine-tuned with checkpoints (the runs shared with Fig. 2 and 13); each statistic is summed
over the dense layers per checkpoint. The paper finds only kurtosis consistently (almost) monotone. A statistic
counts as monotone for a root when its Spearman rho with the step has |rho| >= `min_abs_rho`, and as
consistent when that holds for every root with one sign.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.report import plot_panels
from analysis.trajectories import finetune_panels
from analysis.trends import panel_table, panel_why, trend_rows

NAME = "fig8_stats"


def compute(cfg: DictConfig) -> dict:
    """Each statistic along each root's fine-tune; Spearman with step per root and panel."""
    k = report.knobs(cfg, NAME)
    panels = [(str(s), str(s), str(k.kind)) for s in k.stats]
    out = finetune_panels(cfg, panels, layers=dict(k.get("layers") or {}), min_abs_rho=float(k.min_abs_rho))
    return {**out, "kind": str(k.kind), "order": [p for p, _, _ in panels]}


def render(results: dict, out_dir: Path) -> None:
    """fig8_stats.png (one panel per statistic), the per-statistic table and the per-trajectory table."""
    fig = plot_panels(results["series"], results["order"], ylabel=f"score (sum over {results['kind']} layers)",
                      titles={p: f"{p} (fine-tuning)" for p in results["order"]}, ncols=2)
    report.save_figure(fig, out_dir, NAME)
    report.write_table(panel_table(results["panels"]), out_dir, NAME,
                       caption=f"Fig. 8: Spearman rho of each direction statistic with the fine-tuning step, per "
                               f"root; consistent = |rho| >= {results['min_abs_rho']} with one sign for every root")
    report.write_table(trend_rows(results["series"], keys=("panel", "label")), out_dir, f"{NAME}_trajectories",
                       caption="Fig. 8: trend of each statistic along each fine-tune")


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    consistent = [p for p, s in results["panels"].items() if s["consistent"]]
    ours = (f"consistently monotone: {', '.join(consistent) or 'none'} "
            f"(of {', '.join(results['order'])}; |rho| >= {results['min_abs_rho']} for every root)")
    only_kurtosis = consistent == ["kurtosis"]
    notes = ("Built-in tiny roots and tasks. " + ("As in the paper, only kurtosis is consistently monotone."
             if only_kurtosis else "This differs from the paper, where only kurtosis is consistently monotone"
             + panel_why(results, "kurtosis") + "."))
    return {"title": "Fig. 8: variance, skewness, kurtosis and entropy along fine-tuning",
            "paper": "only kurtosis is consistently (almost) monotonic across roots", "ours": ours, "notes": notes}


@experiment(NAME, order=100)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
