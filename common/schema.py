"""Typed stage options: the schemas in Hydra's ConfigStore, and the one check of options given as plain dicts.

Each stage declares its options as dataclasses (`recovery/config.py`, `data_gen/config.py`). `register_schemas`
stores them in Hydra's ConfigStore as `<group>/schema`, and the group's yaml files extend that schema (a
`schema` entry first in their defaults list), so Hydra checks every composed config against it: a misspelled
key or a value of the wrong type fails at composition with Hydra's message naming the key (`check_config` repeats
the check before the stages run, for keys added with `+key=value`). `merge_options` applies the same dataclasses
to options that reach a stage as plain dicts (Python callers, tests, per-experiment overrides): unknown keys,
wrong types, values outside a field's `choices` and values that fail a field's `check` (a range, a regex that
must compile) are ConfigErrors naming the option.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
import typing
from functools import lru_cache
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

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


def check(test: Callable[[Any], bool], rule: str) -> dict[str, tuple]:
    """Field metadata: `test(value)` must hold; `rule` ends the message "<option> must <rule>, got <value>"."""
    return {"check": (test, rule)}


def number(low: float | None = None, high: float | None = None, *, above: bool = False, integer: bool = False,
           optional: bool = False, also: tuple = ()) -> dict[str, tuple]:
    """Field metadata: a finite number (an int with `integer`) >= `low` (> with `above`) and <= `high`; None too
    with `optional`, and any of the values in `also`."""
    def test(v: Any) -> bool:
        if v in also or (optional and v is None):
            return True
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not math.isfinite(v):
            return False
        return (low is None or (v > low if above else v >= low)) and (high is None or v <= high)
    rule = "be an integer" if integer else "be a finite number"
    rule += f" {'>' if above else '>='} {low}" if low is not None else ""
    rule += f"{' and' if low is not None else ''} <= {high}" if high is not None else ""
    rule += f", or one of {list(also)}" if also else ""
    return check(test, rule + (", or null" if optional else ""))


def _compiles(v: Any) -> bool:
    try:
        re.compile(v)
    except (re.error, TypeError):
        return False
    return True


def pattern(optional: bool = True) -> dict[str, tuple]:
    """Field metadata: a regular expression that compiles (Python `re`), or None with `optional`."""
    return check(lambda v: (optional and v is None) or (isinstance(v, str) and _compiles(v)),
                 "be a valid Python regular expression" + (" or null" if optional else ""))


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
        ConfigError: an undeclared key, a value of the wrong type or one a field's `choices` / `check` rejects
            (the message names it).
    """
    for group in SCHEMAS:
        if OmegaConf.is_dict(cfg.get(group)):
            schema = schema_of(group)
            _merge(schema, OmegaConf.to_container(cfg[group], resolve=False), group)   # names and types
            try:   # resolved in the whole config (the group's values point into paths, num_threads, ...)
                values = OmegaConf.to_container(cfg[group], resolve=True)
            except OmegaConfBaseException:   # an interpolation only a running job resolves (${hydra:...})
                continue
            check_values(schema, OmegaConf.to_container(_merge(schema, values, group)), group)


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
        ConfigError: a key the schema does not declare, a value of the wrong type, NaN / inf, or one outside a
            field's `choices` or failing its `check`; the message names the option.
    """
    _check_finite(given or {}, where)
    out = OmegaConf.to_container(_merge(schema, jsonable(given or {}), where), resolve=True)
    check_values(schema, out, where)
    return out


def _check_finite(given: Any, where: str) -> None:
    """NaN / inf in the options is a ConfigError naming the option (JSON, and so `jsonable`, has no such values)."""
    items = given.items() if isinstance(given, Mapping) or OmegaConf.is_dict(given) else ()
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key} must be a finite number, got {value}")
        if isinstance(value, Mapping) or OmegaConf.is_dict(value):
            _check_finite(value, f"{where}.{key}")


def _unknown_key(error: ConfigKeyError, where: str) -> str:
    """"<where>[.<parent>]: unknown option '<key>'; known: [...]" for OmegaConf's error on an undeclared key."""
    parent, _, key = str(error.full_key).rpartition(".")
    known = ([f.name for f in dataclasses.fields(error.object_type)]
             if dataclasses.is_dataclass(error.object_type) else [])
    place = f"{where}.{parent}" if parent else where
    return f"{place}: unknown option {key!r}; known: {sorted(known)}"


def check_values(schema: type, options: Mapping, where: str) -> None:
    """Raise ConfigError when an option of `options` lies outside its field's `choices` or fails its `check`
    (nested schemas too)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        value = options.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}.{f.name} must be one of {list(allowed)}, got {value!r}")
        if "check" in f.metadata and not f.metadata["check"][0](value):
            raise ConfigError(f"{where}.{f.name} must {f.metadata['check'][1]}, got {value!r}")
        nested = _dataclass_of(hints[f.name])
        if nested is not None and isinstance(value, Mapping):
            check_values(nested, value, f"{where}.{f.name}")


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (`X` or `Optional[X]`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None
