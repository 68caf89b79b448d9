"""Digests of the graph configs' recipes (conf/data_gen/*.yaml): what a result records about the graphs it read.

A result's record (analysis.report) holds `recipe_digest(name)` for every graph config its experiment reads
(`configs_read`), and results/README.md flags a result whose configs changed since, as it does for rebuilt roots
(`data_gen.roots.shipped_digests`). The digest covers what determines the weights (methods and their recipes, tasks,
tree shape, roots, image size, devices) and leaves out where and how a build runs (paths, workers, executor, seed:
experiments set their own seeds).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from common.paths import project_root

# Keys of a data_gen config that say where or how a build runs, not what it trains.
RUNTIME_KEYS = ("defaults", "name", "dir", "seed", "num_threads", "workers", "cache_dir", "data_dir", "force",
                "checkpoint_every", "executor", "max_resubmits", "progress", "smoke")


def config_dir() -> Path:
    """conf/data_gen of this checkout."""
    return project_root() / "conf" / "data_gen"


def config_names() -> list[str]:
    """The graph configs (conf/data_gen/<name>.yaml)."""
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def _composed(name: str) -> Any:
    """conf/data_gen/<name>.yaml merged over the files its defaults list names (schema entries are not files)."""
    own = OmegaConf.load(config_dir() / f"{name}.yaml")
    parents = [d for d in (own.get("defaults") or []) if isinstance(d, str) and d != "_self_"
               and (config_dir() / f"{d}.yaml").is_file()]
    return OmegaConf.merge(*(_composed(p) for p in parents), own)


def recipe_digest(name: str) -> str | None:
    """sha256 (16 hex digits) of what config `name` trains, or None when conf/data_gen/<name>.yaml is gone."""
    if not (config_dir() / f"{name}.yaml").is_file():
        return None
    cfg = OmegaConf.to_container(_composed(name), resolve=False)
    recipe = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def configs_read(knobs: Any, names: list[str] | None = None) -> list[str]:
    """The graph configs an experiment's resolved knobs name: a string equal to a config name (a graph spec) or the
    `data_gen` entry of a {data_gen: NAME, overrides: ...} spec, anywhere in the knobs."""
    known = set(config_names() if names is None else names)
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, str):
            if x in known:
                found.add(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(OmegaConf.to_container(knobs, resolve=True) if OmegaConf.is_config(knobs) else knobs)
    return sorted(found)


def changed_recipes(recorded: dict[str, str], current: Mapping[str, str | None] | None = None) -> list[str]:
    """The configs of a record's {name: digest} whose recipe differs now (or whose file is gone); `current`: the
    digests now, when already read (names it lacks are read)."""
    current = current or {}
    return sorted(n for n, h in recorded.items() if (current[n] if n in current else recipe_digest(n)) != h)
