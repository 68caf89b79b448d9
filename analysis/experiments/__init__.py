"""Registry of experiments, filled by the `@experiment(name)` decorator on each module's `run`.

An experiment is one module in this package defining

    compute(cfg: DictConfig) -> dict             # heavy: builds/reuses graphs, runs recovery, JSON-able results
    render(results: dict, out_dir: Path) -> None  # tables and figures from `results` only
    @experiment("name", order=...)
    def run(cfg: DictConfig) -> dict             # compute -> results.json -> render -> experiment.json

and reading its knobs from `cfg.analysis.<name>` (optional conf/analysis/<name>.yaml). Dropping such a module in
this folder is all it takes: `python run.py +experiment=analysis analysis.experiments=[name]` runs it, and with a
conf/analysis/<name>.yaml also `python run.py +experiment=name` (conf/experiment/analysis.yaml).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from omegaconf import DictConfig

RunFn = Callable[[DictConfig], dict]


@dataclass(frozen=True)
class Experiment:
    """One registered experiment.

    Attributes:
        name: registry name (results folder, knob block `cfg.analysis.<name>`).
        module: the module defining compute / render / run.
        order: position in results/README.md (calibration first, then the paper's order).
        not_run_here: why it cannot run on this project's offline CPU machines (listed in results/README.md).
        recovers: it scores recoveries told `analysis.stages` (its record holds the setting; results/README.md flags
            one made under another, or before the setting was recorded).
    """

    name: str
    module: ModuleType
    order: float
    not_run_here: str | None = None
    recovers: bool = False

    @property
    def run(self) -> RunFn:
        return self.module.run

    @property
    def render(self) -> Callable:
        return self.module.render


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def experiment(name: str, *, order: float = 1000.0, not_run_here: str | None = None,
               recovers: bool = False) -> Callable[[RunFn], RunFn]:
    """Register the module of the decorated `run` function as experiment `name`."""
    def register(run: RunFn) -> RunFn:
        module = importlib.import_module(run.__module__)
        for attr in ("compute", "render"):
            if not callable(getattr(module, attr, None)):
                raise TypeError(f"{run.__module__} must define {attr}() to be registered as experiment {name!r}")
        known = _REGISTRY.get(name)
        if known is not None and known.module.__name__ != module.__name__:
            raise ValueError(f"experiment {name!r} registered twice: {known.module.__name__} and {module.__name__}")
        _REGISTRY[name] = Experiment(name, module, float(order), not_run_here, recovers)
        return run
    return register


def registry() -> dict[str, Experiment]:
    """Every experiment of this package (imported once), ordered as results/README.md lists them."""
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def get(name: str) -> Experiment:
    """The experiment registered as `name`."""
    known = registry()
    if name not in known:
        raise KeyError(f"unknown analysis experiment {name!r}; known: {sorted(known)}")
    return known[name]
