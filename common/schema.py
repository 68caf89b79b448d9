"""Typed stage options: the schemas in Hydra's ConfigStore, and the one check of options given as plain dicts.

Each stage declares its options as dataclasses (`recovery/config.py`, `data_gen/config.py`). `register_schemas`
stores them in Hydra's ConfigStore as `<group>/schema`, and the group's yaml files extend that schema (a
`schema` entry first in their defaults list), so Hydra checks every composed config against it: a misspelled
key or a value of the wrong type fails at composition with Hydra's message naming the key (`check_config` repeats
the check before the stages run, for keys added with `+key=value`). `merge_options` applies the same dataclasses
to options that reach a stage as plain dicts (Python callers, tests, per-experiment overrides): unknown keys,
wrong types and values outside a field's `choices` are ConfigErrors.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from functools import lru_cache
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from common.errors import ConfigError
from common.io import jsonable

# Config group -> "module:dataclass" of its schema (imported when first needed).
SCHEMAS: dict[str, str] = {
    "data_gen": "data_gen.config:DataGenConfig",
    "recovery": "recovery.config:RecoveryConfig",
}


def choices(*values: Any) -> dict[str, tuple]:
    """Field metadata naming the values an option may take: `field(default="a", metadata=choices("a", "b"))`."""
    return {"choices": tuple(values)}


@lru_cache(maxsize=None)
def register_schemas() -> None:
    """Store each stage's schema in Hydra's ConfigStore as `<group>/schema` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group in SCHEMAS:
        store.store(group=group, name="schema", node=schema_of(group))


def schema_of(group: str) -> type:
    """The schema dataclass of config group `group` (a key of SCHEMAS)."""
    module, name = SCHEMAS[group].split(":")
    return getattr(importlib.import_module(module), name)


def check_config(cfg: DictConfig) -> None:
    """Check the composed config's stage groups against their schemas once more, before any stage runs.

    Composition already rejects a misspelled key in a yaml file or a plain override; this catches keys added with
    `+key=value` / `++key=value`, which Hydra adds to any node, schema or not.

    Raises:
        ConfigError: an undeclared key or a value of the wrong type (the message names it).
    """
    for group in SCHEMAS:
        if OmegaConf.is_dict(cfg.get(group)):
            _merge(schema_of(group), OmegaConf.to_container(cfg[group], resolve=False), group)


def _merge(schema: type, given: Any, where: str) -> DictConfig:
    """`given` merged into `schema`; OmegaConf's errors become ConfigErrors naming the option."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), given)
    except ConfigKeyError as e:
        raise ConfigError(_unknown_key(e, where)) from e
    except ValidationError as e:
        raise ConfigError(f"{where}.{e.full_key}: {str(e.msg).splitlines()[0]}") from e


def merge_options(schema: type, given: Mapping | None, where: str) -> dict[str, Any]:
    """`given` merged over the defaults of `schema` (a dataclass), as a plain dict.

    Args:
        schema: the dataclass declaring the options, their types and defaults.
        given: the options set (a dict or an OmegaConf node; None: none set).
        where: the options' place in the config, for messages (e.g. "recovery.tree").

    Raises:
        ConfigError: a key the schema does not declare, a value of the wrong type, or one outside a field's
            `choices`; the message names the option.
    """
    out = OmegaConf.to_container(_merge(schema, jsonable(given or {}), where), resolve=True)
    check_choices(schema, out, where)
    return out


def _unknown_key(error: ConfigKeyError, where: str) -> str:
    """"<where>[.<parent>]: unknown option '<key>'; known: [...]" for OmegaConf's error on an undeclared key."""
    parent, _, key = str(error.full_key).rpartition(".")
    known = ([f.name for f in dataclasses.fields(error.object_type)]
             if dataclasses.is_dataclass(error.object_type) else [])
    place = f"{where}.{parent}" if parent else where
    return f"{place}: unknown option {key!r}; known: {sorted(known)}"


def check_choices(schema: type, options: Mapping, where: str) -> None:
    """Raise ConfigError when an option of `options` lies outside its field's `choices` (nested schemas too)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        value = options.get(f.name)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}.{f.name} must be one of {list(allowed)}, got {value!r}")
        nested = _dataclass_of(hints[f.name])
        if nested is not None and isinstance(value, Mapping):
            check_choices(nested, value, f"{where}.{f.name}")


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (`X` or `Optional[X]`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None
