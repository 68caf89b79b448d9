"""ResNet tree (paper 6.2): a 21-model ResNet tree (full fine-tuning) recovered with l2; the paper: 1.0."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.recover import accuracy_frame, accuracy_note, accuracy_run
from analysis.report import knobs, ours_vs_paper, run_experiment, save_figure, write_table

NAME = "resnet"
PAPER = 1.0


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    return {"rows": [accuracy_run(cfg, "ResNet", k.graph, k.get("recovery"))]}


def render(results: dict, out_dir: Path) -> None:
    write_table(accuracy_frame(results["rows"], label="tree"), out_dir, NAME,
                caption="ResNet Model Tree (full fine-tuning): edge accuracy")
    r = results["rows"][0]
    write_table(pd.DataFrame([{"tree": "ResNet", "ours": r["edge_accuracy"], "paper": PAPER}]), out_dir,
                f"{NAME}_graph", caption="ResNet tree accuracy: ours vs the paper (ResNet-50, 21 models)")
    bars = [{"label": f"ResNet ({r['n_models']} models)", "ours": r["edge_accuracy"], "paper": PAPER}]
    save_figure(ours_vs_paper(bars, title="ResNet Model Tree: edge accuracy"), out_dir, NAME)


def describe(results: dict) -> dict:
    r = results["rows"][0]
    return {"title": "ResNet Model Tree", "paper": "ResNet-50 tree, 21 models, full fine-tuning: accuracy 1.0",
            "ours": f"{r['edge_accuracy']:.3f} on {r['n_models']} models ({r['graph']})",
            "notes": accuracy_note(r, PAPER, "accuracy")}


@experiment(NAME, order=30, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
