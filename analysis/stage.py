"""The analysis stage: run the experiments listed in cfg.analysis.experiments, then rebuild results/README.md."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from analysis import experiments
from analysis.report import build_results_readme

log = logging.getLogger("mother.analysis")


def run(cfg: DictConfig) -> dict:
    """Run each experiment of `cfg.analysis.experiments` in order; each writes into
    ${analysis.out_dir or paths.results_dir}/<experiment>/. Returns {name: results, "readme": path}.

    Unknown names fail before anything runs, so a typo does not cost an hour of earlier experiments.
    """
    names = list(cfg.analysis.experiments or [])
    if not names:
        raise ValueError("cfg.analysis.experiments is empty: name at least one experiment "
                         f"(known: {sorted(experiments.EXPERIMENTS)})")
    modules = {name: experiments.get(name) for name in names}
    out: dict = {}
    for name, module in modules.items():
        start = time.perf_counter()
        log.info("analysis experiment %s", name)
        out[name] = module.run(cfg)
        log.info("analysis experiment %s done in %.1f s", name, time.perf_counter() - start)
    results_dir = Path(cfg.analysis.get("out_dir") or cfg.paths.results_dir)
    out["readme"] = str(build_results_readme(results_dir))
    return out
