"""The data_gen stage: build the model graph `cfg.data_gen` describes (resuming a partial one)."""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from data_gen.graph import build_graph

log = logging.getLogger("mother.data_gen")


def run(cfg: DictConfig) -> dict:
    """Build the configured graph with a progress bar over nodes; log and return a short summary."""
    summary = build_graph(cfg)
    acc = summary["mean_val_accuracy"]
    log.info("graph %s: %d nodes, %d built, %d skipped (already done), %.1f s, mean val accuracy %s -> %s",
             cfg.data_gen.name, summary["nodes"], len(summary["built"]), len(summary["skipped"]),
             summary["seconds"], "n/a" if acc is None else f"{acc:.3f}", summary["graph_json"])
    return summary
