"""Fig. 13: the kurtosis direction score per layer type (query, key, value, dense) along fine-tuning.

Each built-in root is fine-tuned with checkpoints (the runs shared with Fig. 2 and 8); per checkpoint the
statistic is summed over the layers of one kind (timm's fused qkv split into q, k, v by recovery's layer
selection). The paper finds the dense layers consistently monotone across roots.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.report import plot_panels
from analysis.trajectories import finetune_panels
from analysis.trends import panel_table, panel_why, trend_rows

NAME = "fig13_layers"


def compute(cfg: DictConfig) -> dict:
    """The statistic per layer kind along each root's fine-tune; Spearman with step per root and kind."""
    k = report.knobs(cfg, NAME)
    panels = [(str(kind), str(k.stat), str(kind)) for kind in k.kinds]
    out = finetune_panels(cfg, panels, layers=dict(k.get("layers") or {}), min_abs_rho=float(k.min_abs_rho))
    return {**out, "stat": str(k.stat), "order": [p for p, _, _ in panels]}


def render(results: dict, out_dir: Path) -> None:
    """fig13_layers.png (one panel per layer kind) and the tables."""
    fig = plot_panels(results["series"], results["order"], ylabel=f"{results['stat']} score (sum over layers)",
                      titles={p: f"{p} layers (fine-tuning)" for p in results["order"]}, ncols=2)
    report.save_figure(fig, out_dir, NAME)
    report.write_table(panel_table(results["panels"]), out_dir, NAME,
                       caption=f"Fig. 13: Spearman rho of the {results['stat']} score of each layer kind with the "
                               f"fine-tuning step, per root; consistent = |rho| >= {results['min_abs_rho']} with "
                               "one sign for every root")
    report.write_table(trend_rows(results["series"], keys=("panel", "label")), out_dir, f"{NAME}_trajectories",
                       caption="Fig. 13: trend of each layer kind's score along each fine-tune")


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    consistent = [p for p, s in results["panels"].items() if s["consistent"]]
    ours = (f"consistently monotone layer kinds: {', '.join(consistent) or 'none'} "
            f"(of {', '.join(results['order'])}; |rho| >= {results['min_abs_rho']} for every root)")
    dense_ok = "dense" in consistent
    notes = ("Built-in tiny roots and tasks. " + ("As in the paper, the dense layers are consistently monotone."
             if dense_ok else "This differs from the paper, where the dense layers are consistently monotone"
             + panel_why(results, "dense") + "."))
    return {"title": "Fig. 13: direction score per layer type along fine-tuning",
            "paper": "the dense layers are consistently monotonic across roots", "ours": ours, "notes": notes}


@experiment(NAME, order=110)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
