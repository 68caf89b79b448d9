"""Table 1: MoTHer edge accuracy per Model Tree and for the whole Model Graph on the LoRA-V, LoRA-F, FT and Mixed
sub-graphs (paper section 6.2), with the clustering accuracy beside it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.recover import accuracy_frame, accuracy_note, accuracy_run
from analysis.report import knobs as get_knobs, ours_vs_paper, run_experiment, save_figure, write_table

NAME = "table1"
PAPER_COLUMNS = ["ImageNet", "ImageNet-21k", "MAE", "DINO", "MSN", "Model Graph"]
PAPER = {"LoRA-V": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "LoRA-F": [1.0, 1.0, 1.0, 1.0, 0.8, 0.96],
         "FT": [0.85, 0.85, 1.0, 1.0, 1.0, 0.94], "Mixed": [0.9, 0.9, 0.9, 0.9, 0.9, 0.83]}


def compute(cfg: DictConfig) -> dict:
    """Recover each configured sub-graph (cfg.analysis.table1.subgraphs: label -> {graph, recovery})."""
    knobs = get_knobs(cfg, NAME)
    rows = [accuracy_run(cfg, label, sub.graph, sub.get("recovery"), plot=bool(knobs.get("plot", False)))
            for label, sub in knobs.subgraphs.items()]
    return {"rows": rows}


def paper_frame(labels: list[str] | None = None) -> pd.DataFrame:
    """The paper's Table 1 (rows restricted to `labels` when given)."""
    return pd.DataFrame([{"sub-graph": k, **dict(zip(PAPER_COLUMNS, v))} for k, v in PAPER.items()
                         if labels is None or k in labels])


def render(results: dict, out_dir: Path) -> None:
    rows = results["rows"]
    write_table(accuracy_frame(rows), out_dir, NAME, caption="Ours: MoTHer edge accuracy per Model Tree (column: "
                "its root) and for the Model Graph; clustering accuracy of the trees")
    write_table(paper_frame(), out_dir, f"{NAME}_paper", caption="Paper Table 1 (ViT-B/16 roots, 105 models each)")
    side = pd.DataFrame([{"sub-graph": r["label"], "ours": r["edge_accuracy"],
                          "paper": PAPER.get(r["label"], [None] * 6)[-1]} for r in rows])
    write_table(side, out_dir, f"{NAME}_graph", caption="Model Graph edge accuracy: ours vs the paper")
    bars = side.rename(columns={"sub-graph": "label"}).to_dict("records")
    save_figure(ours_vs_paper(bars, title="Table 1: Model Graph edge accuracy"), out_dir, NAME)


def describe(results: dict) -> dict:
    rows = results["rows"]
    ours = "; ".join(f"{r['label']} {r['edge_accuracy']:.3f} (clustering {r['clustering_accuracy']:.2f}, "
                     f"{r['n_models']} models)" for r in rows)
    notes = "; ".join(accuracy_note(r, PAPER[r["label"]][-1], f"{r['label']} accuracy")
                      for r in rows if r["label"] in PAPER)
    return {"title": "Table 1: MoTHer accuracy on the LoRA-V, LoRA-F, FT and Mixed sub-graphs",
            "paper": "Model Graph accuracy LoRA-V 1.0, LoRA-F 0.96, FT 0.94, Mixed 0.83 (clustering perfect)",
            "ours": ours, "notes": notes + ". Per-tree columns are our roots, not the paper's ViT-B roots."}


@experiment(NAME, order=10, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
