"""The data_gen stage: build the model graph `cfg.data_gen` describes (resuming a partial one)."""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from common.errors import ConfigError
from data_gen.graph import build_graph

log = logging.getLogger("mother.data_gen")


def run(cfg: DictConfig) -> dict:
    """Build the configured graph with a progress bar over nodes; log and return a short summary.

    `data_gen.executor=slurm` sends each level's fine-tunes to SLURM as one job array (hydra/launcher=slurm|local
    sets the resources; see data_gen/slurm.py); the default `inline` builds in this process.
    """
    executor = cfg.data_gen.get("executor", "inline")
    if executor == "slurm":
        from data_gen.slurm import build_graph_slurm
        summary = build_graph_slurm(cfg)
    elif executor == "inline":
        summary = build_graph(cfg)
    else:
        raise ConfigError(f"data_gen.executor={executor!r}: use inline or slurm")
    acc = summary["mean_val_accuracy"]
    log.info("graph %s: %d nodes, %d built, %d skipped (already done), %.1f s, mean val accuracy %s -> %s",
             cfg.data_gen.name, summary["nodes"], len(summary["built"]), len(summary["skipped"]),
             summary["seconds"], "n/a" if acc is None else f"{acc:.3f}", summary["graph_json"])
    return summary
