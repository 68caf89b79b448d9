"""Locate the project root; register the `mother_root` OmegaConf resolver, the config schemas and the generated
experiment configs."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from common.schema import register_schemas

MARKER = ".project-root"


def project_root(start: Path | None = None) -> Path:
    """Return the nearest folder at or above `start` (default: cwd, then this file) holding `.project-root`.

    Raises:
        FileNotFoundError: no marker found; set MOTHER_ROOT or paths.root_dir instead.
    """
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for base in candidates:
        for folder in (base, *base.parents):
            if (folder / MARKER).is_file():
                return folder
    raise FileNotFoundError(
        f"no {MARKER} marker above {candidates[0]}; set MOTHER_ROOT or override paths.root_dir=...")


def portable(path: str | Path) -> str:
    """`path` as results record it: relative to the project root when inside it (so results.json travels between
    machines and clones), else absolute. `from_portable` reads it back."""
    path = Path(path).resolve()
    try:
        return path.relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


def from_portable(path: str | Path) -> Path:
    """A path recorded by `portable`, resolved against this checkout's project root."""
    return project_root() / path  # an absolute path stays as it is


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def register_resolvers() -> None:
    """Register `${mother_root:}`, the stages' config schemas (common.schema) and the generated `experiment/<name>`
    configs (idempotent). Call before composing."""
    if not OmegaConf.has_resolver("mother_root"):
        OmegaConf.register_new_resolver("mother_root", lambda: str(project_root()))
    register_schemas()
    register_experiment_configs()


@lru_cache(maxsize=None)
def analysis_experiment_names() -> tuple[str, ...]:
    """Names of the conf/analysis/<name>.yaml files that configure one experiment (`queue: {<name>: true}`)."""
    names = []
    for path in sorted((CONF_DIR / "analysis").glob("*.yaml")):
        queued = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("queue")
        if queued == {path.stem: True}:
            names.append(path.stem)
    return tuple(names)


def experiment_config_names() -> set[str]:
    """Every `+experiment=NAME` choice: conf/experiment/*.yaml and the generated analysis experiment configs."""
    return {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")} | set(analysis_experiment_names())


@lru_cache(maxsize=None)
def register_experiment_configs() -> None:
    """`+experiment=NAME` for each analysis experiment with a conf/analysis/NAME.yaml and no conf/experiment file:
    Hydra's ConfigStore gets `experiment/NAME` = conf/experiment/analysis.yaml with `analysis: NAME` and
    task_name NAME, so no per-experiment file repeats those lines."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    own = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    for name in analysis_experiment_names():
        if name not in own:
            store.store(group="experiment", name=name, package="_global_",
                        node={"defaults": ["analysis", {"override /analysis": name}], "task_name": name})
