"""Build a model graph on SLURM: one submitit job array per level (data_gen/slurm.py).

    python scripts/slurm/build_graph.py data_gen=lora_v hydra/launcher=slurm \
        hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=120

Run it on the login node WITHOUT -m: this process only submits and waits (it trains nothing); the jobs get
the resources of `hydra.launcher.*`. Rerun the same command after any failure: finished nodes are kept.
Takes every override `python run.py` takes (data_gen.*, paths.*, seed ...).
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from common.paths import register_resolvers

register_resolvers()
log = logging.getLogger("mother.data_gen")


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from common.runinfo import save_run_record
    from common.schema import check_config
    from data_gen.slurm import build_graph_slurm

    check_config(cfg)
    save_run_record(cfg, cfg.paths.output_dir, {"stages": ["data_gen"], "executor": "slurm"})
    s = build_graph_slurm(cfg)
    log.info("graph %s: %d nodes, %d built, %d skipped, %d resubmitted, %.1f s -> %s", cfg.data_gen.name,
             s["nodes"], len(s["built"]), len(s["skipped"]), len(s["resubmitted"]), s["seconds"], s["graph_json"])


if __name__ == "__main__":
    main()
