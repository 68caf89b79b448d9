"""Graph specification: turn the `data_gen` config into a deterministic list of node jobs.

A job is a plain JSON-able dict::

    {"id": "dino-0-2", "parent": "dino-0", "level": 2, "root": "dino", "task": "vtab/dtd",
     "recipe": {"method": "lora", "lora_rank": 16, ..., "seed": 123}, "data": {"image_size": 32, "seed": 7}}

Roots are jobs too (level 0, `"recipe": {"method": "pretrained", "source": "<root spec>", "arch"?}`). Every random choice of a node (method,
task, hyperparameters) comes from a generator seeded by (experiment seed, node id) alone, so a node's job does
not change when the graph grows elsewhere, and the same config always gives the same list.

With `smoke.enabled` (set by `data_gen.smoke.smoke_config`), each fine-tune's job is capped after it is drawn
(`data_gen.smoke.smoke_job`), so a smoke node has the task, method and seed of the real node with its id.

Config values of a method block are sampled as follows: a scalar or a list is used as is; `{choices: [...]}`
picks one uniformly; `{range: [lo, hi]}` draws an integer in [lo, hi] (inclusive) or a float uniformly.
"""
from __future__ import annotations

import random
import re
from typing import Any, Mapping

from common.errors import ConfigError
from common.schema import merge_options
from common.seed import derive_seed
from data_gen.config import Methods

# The keys a method block may hold: data_gen.config.FullMethod / LoraMethod (anything else fails loudly).
DATA_KEYS = ("n_train", "n_val")  # split sizes of built-in tasks (go to load_task, not to the recipe)
REQUIRED = {"full": ("tasks", "lr", "epochs", "batch_size"),
            "lora": ("tasks", "lr", "epochs", "batch_size", "lora_rank", "lora_alpha")}
DEFAULTS = {"max_steps": None, "optimizer": "adamw", "weight_decay": 0.0}
ROOT_ID = re.compile(r"^[A-Za-z0-9_.]+$")   # a root id names node ids and files: no '-' or '/'


def sample(value: Any, rng: random.Random) -> Any:
    """Draw one value: `{choices: [...]}`, `{range: [lo, hi]}`, or a fixed value (scalar or list)."""
    if isinstance(value, Mapping):
        if set(value) == {"choices"}:
            if not value["choices"]:
                raise ConfigError("empty 'choices'")
            return rng.choice(list(value["choices"]))
        if set(value) == {"range"}:
            lo, hi = value["range"]
            if lo > hi:
                raise ConfigError(f"range [{lo}, {hi}] is empty")
            if isinstance(lo, int) and isinstance(hi, int):
                return rng.randint(lo, hi)
            return rng.uniform(float(lo), float(hi))
        raise ConfigError(f"a sampled value is {{choices: [...]}} or {{range: [lo, hi]}}, got keys {sorted(value)}")
    return value


def task_key(name: str) -> str:
    """The dataset a task name refers to, ignoring its source ("vtab/svhn" and "vtab10k/svhn" are one)."""
    return name.rsplit("/", 1)[-1]


def _check(dg: Mapping) -> None:
    """Validate the parts of the config the spec uses; errors say which key is wrong."""
    where = f"data_gen config {dg.get('name', '?')!r}"
    roots = dg.get("roots") or []
    if not roots:
        raise ConfigError(f"{where}: 'roots' is empty")
    ids = [r.get("id") for r in roots]
    for r in roots:
        if not r.get("id") or not ROOT_ID.match(str(r["id"])):
            raise ConfigError(f"{where}: root id {r.get('id')!r} must match {ROOT_ID.pattern} (no '-' or '/')")
        if not r.get("source"):
            raise ConfigError(f"{where}: root {r['id']!r} has no 'source' (builtin:..., timm:..., hf:... or a path)")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: duplicate root ids {ids}")
    depth = int(dg.get("depth", 0))
    if depth < 0:
        raise ConfigError(f"{where}: depth must be >= 0, got {depth}")
    children = dg.get("children")
    if not isinstance(children, int) and len(list(children)) != depth:
        raise ConfigError(f"{where}: 'children' is an int or a list of {depth} ints (one per level)")
    merge_options(Methods, dg.get("methods"), "data_gen.methods")
    methods = active_methods(dg)
    if depth and not methods:
        raise ConfigError(f"{where}: 'methods' is empty")
    for name, block in methods.items():
        missing = [k for k in REQUIRED[name] if block.get(k) is None]
        if missing:
            raise ConfigError(f"{where}: methods.{name} is missing {missing}")
        if len({task_key(t) for t in block["tasks"]}) < 2 and depth > 1:
            raise ConfigError(f"{where}: methods.{name}.tasks needs >= 2 datasets so a child's task can differ "
                             "from its parent's")


def active_methods(dg: Mapping) -> dict:
    """The config's method blocks, without those set to null (how a derived config drops one), each with the keys
    it sets (a null key is unset: the recipe's default applies)."""
    return {name: {k: v for k, v in block.items() if v is not None}
            for name, block in (dg.get("methods") or {}).items() if block is not None}


def _children_at(children: int | list[int], level: int) -> int:
    return children if isinstance(children, int) else list(children)[level - 1]


def node_job(dg: Mapping, seed: int, node_id: str, parent: Mapping) -> dict:
    """The job of fine-tuned node `node_id` under `parent` (a job dict): a pure function of its arguments."""
    rng = random.Random(derive_seed(seed, "node", node_id))
    methods = active_methods(dg)
    method = rng.choice(sorted(methods))
    block = methods[method]
    pool = [t for t in block["tasks"] if task_key(t) != task_key(parent["task"])]
    if not pool:
        raise ConfigError(f"methods.{method}.tasks has no task other than the parent's ({parent['task']!r})")
    task = rng.choice(pool)
    recipe = {**DEFAULTS, "method": method}
    for key in sorted(set(block) - {"tasks", *DATA_KEYS}):
        recipe[key] = sample(block[key], rng)
    data = {"image_size": int(dg["image_size"]), "seed": derive_seed(seed, "task", task),
            **{k: int(block[k]) for k in DATA_KEYS if block.get(k) is not None}}
    recipe["seed"] = derive_seed(seed, "train", node_id)
    return {"id": node_id, "parent": parent["id"], "level": parent["level"] + 1, "root": parent["root"],
            "task": task, "recipe": recipe, "data": data}


def build_spec(dg: Mapping, seed: int) -> list[dict]:
    """All jobs of the graph, level by level (roots first); ids read `<root>`, `<root>-i`, `<root>-i-j`, ...

    Args:
        dg: the `data_gen` config as a plain mapping (roots, depth, children, methods, image_size).
        seed: the experiment seed.
    """
    _check(dg)
    jobs = [{"id": str(r["id"]), "parent": None, "level": 0, "root": str(r["id"]),
             "task": str(r.get("task") or "pretrain"),
             "recipe": {"method": "pretrained", "source": str(r["source"]),
                        **({"arch": str(r["arch"])} if r.get("arch") else {})}}
            for r in dg["roots"]]
    frontier = list(jobs)
    for level in range(1, int(dg.get("depth", 0)) + 1):
        n = _children_at(dg["children"], level)
        frontier = [node_job(dg, seed, f"{p['id']}-{i}", p) for p in frontier for i in range(n)]
        jobs.extend(frontier)
    smoke = dg.get("smoke") or {}
    if smoke.get("enabled"):  # a smoke run (data_gen.smoke.smoke_config): the same jobs, capped
        from data_gen.smoke import smoke_job, smoke_settings
        settings = smoke_settings(dg)
        jobs = [smoke_job(j, settings) for j in jobs]
    return jobs
