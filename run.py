"""Single entry point: `python run.py [+experiment=NAME] [overrides]`.

Runs the stages listed in `cfg.stages` in order; each stage is a plain function `run(cfg) -> dict`
in its package, so tests call them directly without the command line.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from common.errors import EXIT_USER_ERROR, UserError
from common.paths import register_resolvers

register_resolvers()
log = logging.getLogger("mother")

# Stage name -> "module:function". A stage is a plain function run(cfg) -> dict.
STAGES: dict[str, str] = {
    "data_gen": "data_gen.stage:run",
    "recovery": "recovery.stage:run",
    "analysis": "analysis.stage:run",
}

# Stages that import torch only when they need it (recovery: GPU kernels, torch checkpoint files, with no global
# torch randomness); a run of these alone skips torch's import (seconds) and its thread / seed setup.
TORCH_ON_DEMAND = frozenset({"recovery"})


def get_stage(name: str) -> Callable[[DictConfig], dict]:
    """Import the stage function named `name` (lazily, so one stage never imports another's deps)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stages(cfg: DictConfig) -> dict[str, Any]:
    """Check the stage options (keys added with `+key=value` too), run cfg.stages in order, record config + seed in
    the output folder, return each stage's result."""
    from common.runinfo import save_run_record
    from common.schema import check_config
    from common.seed import seed_everything

    check_config(cfg)
    uses_torch = any(name not in TORCH_ON_DEMAND for name in cfg.stages)
    if uses_torch and cfg.get("num_threads"):
        import torch
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(int(cfg.seed), with_torch=uses_torch)
    save_run_record(cfg, cfg.paths.output_dir, {"stages": list(cfg.stages)})
    if not cfg.stages:
        log.warning("no stages configured (cfg.stages is empty); nothing to run")
    results: dict[str, Any] = {}
    for name in cfg.stages:
        log.info("stage %s", name)
        results[name] = get_stage(name)(cfg)
    return results


def full_errors(cfg: DictConfig) -> bool:
    """True when user errors should keep their traceback (`debug=true` or HYDRA_FULL_ERROR=1)."""
    return bool(cfg.get("debug")) or os.environ.get("HYDRA_FULL_ERROR", "").strip() == "1"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the configured stages; a user error (bad input or option) ends in one message and exit status 2."""
    try:
        run_stages(cfg)
    except UserError as e:
        if full_errors(cfg):
            raise
        print(f"error: {e} [debug=true or HYDRA_FULL_ERROR=1 shows the traceback]", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
