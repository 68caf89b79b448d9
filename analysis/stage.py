"""The analysis stage: run the queued (or named) experiments, then rebuild results/README.md."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from analysis import experiments
from analysis.report import build_results_readme, experiment_dir

log = logging.getLogger("mother.analysis")


def run(cfg: DictConfig) -> dict:
    """Run each experiment of `experiment_names(cfg)` in order; each writes into
    ${analysis.out_dir or paths.results_dir}/<experiment>/. Returns {name: results, "readme": path}.

    Unknown names fail before anything runs, so a typo does not cost an hour of earlier experiments.
    """
    names = experiment_names(cfg)
    if not names:
        raise ValueError("no analysis experiment is queued (analysis.queue) or named (analysis.experiments): name "
                         f"at least one (known: {sorted(experiments.registry())})")
    check_scale(cfg)
    modules = {name: experiments.get(name) for name in names}
    keep_going = bool(cfg.analysis.get("keep_going", False))
    out: dict = {}
    failed: dict[str, str] = {}
    results_dir = Path(cfg.analysis.get("out_dir") or cfg.paths.results_dir)
    for name, module in modules.items():
        start = time.perf_counter()
        log.info("analysis experiment %s", name)
        try:
            out[name] = module.run(cfg)
        except Exception as e:
            if not keep_going:
                raise
            failed[name] = f"{type(e).__name__}: {e}"
            log.exception("analysis experiment %s failed; going on (analysis.keep_going=true)", name)
            continue
        log.info("analysis experiment %s done in %.1f s", name, time.perf_counter() - start)
        if len(modules) > 1:   # a long queue stopped half-way leaves a README that shows what landed
            build_results_readme(results_dir)
    out["readme"] = str(build_results_readme(results_dir))
    from common.tracking import log_analysis
    log_analysis(cfg, {name: experiment_dir(cfg, name) for name in out if name in modules})
    if failed:
        raise RuntimeError(f"{len(failed)} analysis experiment(s) failed (the others finished and results/README.md "
                           "was rebuilt): " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return out


def experiment_names(cfg: DictConfig) -> list[str]:
    """The experiments to run: `analysis.experiments` when given, else the queued ones in their config order."""
    named = list(cfg.analysis.get("experiments") or [])
    return named or [name for name, on in (cfg.analysis.get("queue") or {}).items() if on]


def check_scale(cfg: DictConfig) -> None:
    """On the command line, the scale is the `scale` config group (`scale=toy`): `analysis.scale` only records it,
    so setting it alone would run one scale and label the results with another."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("scale")
    except ValueError:  # composed without @hydra.main (tests)
        return
    if choice is not None and str(choice) != str(cfg.analysis.scale):
        from common.errors import UserError

        raise UserError(f"analysis.scale={cfg.analysis.scale} but the scale group is {choice}: choose the scale with "
                        f"scale={cfg.analysis.scale} (conf/scale/), not analysis.scale")


def rerender(results_dir: Path, names: list[str] | None = None) -> list[str]:
    """Redraw tables and figures of finished experiments from their results.json (no recomputation), then
    rebuild the README. Returns the experiments redrawn."""
    from analysis.report import RESULTS, rerender as redraw

    results_dir = Path(results_dir)
    done = []
    for folder in sorted(p.parent for p in results_dir.glob(f"*/{RESULTS}")):
        if (names and folder.name not in names) or folder.name not in experiments.registry():
            continue
        module = experiments.get(folder.name).module
        redraw(folder, module.render, getattr(module, "describe", None))
        done.append(folder.name)
    build_results_readme(results_dir)
    return done


if __name__ == "__main__":  # python -m analysis.stage [RESULTS_DIR [NAME ...]]: restyle without rerunning
    import sys

    from common.paths import project_root

    args = sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m analysis.stage [RESULTS_DIR [NAME ...]]: redraw the tables and figures of finished "
              "experiments from their results.json and rebuild RESULTS_DIR/README.md (default: results/)")
        sys.exit(0)
    target = Path(args[0]) if args else project_root() / "results"
    if not target.is_dir():
        sys.exit(f"{target}: no such results folder")
    unknown = sorted(set(args[1:]) - set(experiments.registry()))
    if unknown:
        sys.exit(f"unknown experiment(s) {unknown}; known: {sorted(experiments.registry())}")
    print("redrawn:", ", ".join(rerender(target, args[1:] or None)) or "nothing")
