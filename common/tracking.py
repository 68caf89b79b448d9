"""Send what a recovery or analysis run produced to the experiment logger chosen with `logger=` (conf/logger/).

Fine-tunes log their training curves through Lightning (`data_gen.finetune.build_loggers`). A recovery or
analysis run is logged once, at its end, by `log_recovery` / `log_analysis`: its metrics, its tables and its
figures (tree.png, ...), and its JSON outputs.

- `logger=csv` (CSVLogger config): a folder `<save_dir>/<name>/<run>/` with `metrics.csv` (columns metric, value),
  `tables/<key>.csv`, `images/<key>.png` and `files/` (copies of the run's JSON and other outputs).
- `logger=wandb` (WandbLogger config): one wandb run named `<name>/<run>` with the metrics in its summary, one
  `wandb.Table` per table, one `wandb.Image` per figure and the files saved with the run. Offline unless the
  config says otherwise (conf/logger/wandb.yaml).
- any other Lightning logger: metrics only (with a warning that tables and figures are not sent).

Everything here is a plain function of the config and the files on disk; with `logger=none` nothing is imported.
"""
from __future__ import annotations

import logging
import math
import numbers
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from common.io import atomic_write

log = logging.getLogger("mother.tracking")


def logger_configs(cfg: Any) -> dict[str, dict]:
    """The `logger:` entries of a composed config as plain dicts ({} when no logger is chosen)."""
    logger_cfg = cfg.get("logger") if cfg is not None else None
    if not logger_cfg:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(logger_cfg, DictConfig):
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
    out = {}
    for key, entry in dict(logger_cfg).items():
        if not entry:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ValueError(f"logger {key!r} has no _target_: {entry} (conf/logger/<name>.yaml holds "
                             "{<name>: {_target_: ..., ...}})")
        out[str(key)] = dict(entry)
    return out


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested mapping as {"a/b/c": value}; lists, strings and None are left out."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten_metrics(value, f"{prefix}{key}/"))
        return out
    if isinstance(obj, numbers.Real) and prefix:  # bools and numpy scalars included
        value = float(obj)
        if math.isfinite(value):
            out[prefix.rstrip("/")] = value
    return out


def log_run(cfg: Any, run: str, *, metrics: Mapping[str, float] | None = None,
            tables: Mapping[str, Any] | None = None, images: Mapping[str, str | Path] | None = None,
            files: Mapping[str, str | Path] | None = None) -> list[str]:
    """Log one finished run to every logger of `cfg.logger`.

    Args:
        cfg: the composed config (its `logger` entry decides; none: nothing happens).
        run: the run's name ("recovery", "analysis"): CSV folder version, suffix of the wandb run name.
        metrics: {name: number}.
        tables: {key: pandas.DataFrame}.
        images: {key: image file}.
        files: {relative name: file} kept with the run as they are (JSON outputs).

    Returns:
        Where each logger wrote (a folder per logger).
    """
    configs = logger_configs(cfg)
    metrics, tables, images = dict(metrics or {}), dict(tables or {}), dict(images or {})
    files = {k: Path(v) for k, v in (files or {}).items()}
    images = {k: Path(v) for k, v in images.items()}
    for key, path in [*files.items(), *images.items()]:
        if not path.is_file():
            log.warning("%s run: %s (%s) is not a file; not logged", run, path, key)
    files = {k: v for k, v in files.items() if v.is_file()}
    images = {k: v for k, v in images.items() if v.is_file()}
    where = []
    for key, entry in configs.items():
        target = str(entry["_target_"])
        if target.endswith("CSVLogger"):
            where.append(_log_csv(entry, run, metrics, tables, images, files))
        elif target.endswith("WandbLogger"):
            where.append(_log_wandb(entry, run, metrics, tables, images, files))
        else:
            where.append(_log_other(key, entry, run, metrics))
    for place in where:
        log.info("logged the %s run (%d metrics, %d tables, %d images) to %s", run, len(metrics), len(tables),
                 len(images), place)
    return where


def _safe_key(key: str) -> str:
    """A relative path from a logging key: path separators kept, anything else odd replaced."""
    parts = [re.sub(r"[^A-Za-z0-9_.=-]+", "_", p) for p in str(key).split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def _copy(src: Path, dst: Path) -> Path:
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _log_csv(entry: Mapping, run: str, metrics: Mapping[str, float], tables: Mapping[str, Any],
             images: Mapping[str, Path], files: Mapping[str, Path]) -> str:
    """metrics.csv, tables/, images/ and files/ under <save_dir>/<name>/<run>/ (atomic writes)."""
    import pandas as pd

    folder = Path(entry.get("save_dir") or ".") / str(entry.get("name") or "csv") / _safe_key(run)
    frame = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    atomic_write(folder / "metrics.csv", lambda tmp: frame.to_csv(tmp, index=False))
    for key, table in tables.items():
        atomic_write(folder / "tables" / f"{_safe_key(key)}.csv", lambda tmp, t=table: t.to_csv(tmp, index=False))
    for key, path in images.items():
        _copy(path, folder / "images" / f"{_safe_key(key)}{path.suffix}")
    for key, path in files.items():
        _copy(path, folder / "files" / _safe_key(key))
    return str(folder)


def _log_wandb(entry: Mapping, run: str, metrics: Mapping[str, float], tables: Mapping[str, Any],
               images: Mapping[str, Path], files: Mapping[str, Path]) -> str:
    """One wandb run through Lightning's WandbLogger (same settings as the fine-tunes, offline by default)."""
    import wandb
    from hydra.utils import instantiate

    config = dict(entry)
    config["name"] = f"{config.get('name') or 'mother'}/{run}"
    logger = instantiate(config)
    try:
        experiment = logger.experiment
        experiment.summary.update(dict(metrics))
        payload: dict[str, Any] = dict(metrics)
        for key, table in tables.items():
            payload[f"tables/{key}"] = wandb.Table(dataframe=table.reset_index(drop=True))
        for key, path in images.items():
            payload[f"images/{key}"] = wandb.Image(str(path), caption=path.name)
        experiment.log(payload)
        for key, path in files.items():  # the run's files/ folder is uploaded with the run (`wandb sync` offline)
            _copy(path, Path(experiment.dir) / _safe_key(key))
        where = str(Path(experiment.dir).parent)
    finally:
        if getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
    return where


def _log_other(key: str, entry: Mapping, run: str, metrics: Mapping[str, float]) -> str:
    """A Lightning logger of another kind: its log_metrics only."""
    from hydra.utils import instantiate

    logger = instantiate(entry)
    logger.log_metrics(dict(metrics), step=0)
    logger.finalize("success")
    log.warning("logger %r (%s) gets the %s run's metrics only: tables and figures are sent to csv and wandb "
                "loggers", key, entry["_target_"], run)
    return str(getattr(logger, "log_dir", None) or entry["_target_"])


def recovery_tables(tree: Mapping) -> dict[str, Any]:
    """The recovered graph as two tables: `edges` (parent, child, distance, relation) and `nodes`."""
    import pandas as pd

    edges = pd.DataFrame([{"parent": e.get("parent"), "child": e.get("child"), "distance": e.get("distance"),
                           "l2": e.get("l2"), "base_model_relation": e.get("base_model_relation")}
                          for e in tree.get("edges", [])],
                         columns=["parent", "child", "distance", "l2", "base_model_relation"])
    columns = ["id", "cluster", "stage", "root", "depth", "direction_score", "base_model", "base_model_relation"]
    nodes = pd.DataFrame([{c: n.get(c) for c in columns} for n in tree.get("nodes", [])], columns=columns)
    return {"edges": edges, "nodes": nodes}


def log_recovery(cfg: Any, result: Mapping) -> list[str]:
    """Log a recovery run (the dict `recovery.stage.recover` returns): metrics, edge and node tables, tree.png,
    tree.json and metrics.json."""
    if not logger_configs(cfg):
        return []
    tree = result.get("tree") or {}
    counts = {"n_models": len(tree.get("nodes", [])), "n_trees": len(tree.get("trees", [])),
              "n_edges": len(tree.get("edges", [])), "n_excluded": len(tree.get("excluded") or {}),
              "n_warnings": len(result.get("warnings") or [])}
    metrics = {**flatten_metrics(counts), **flatten_metrics(result.get("metrics") or {})}
    paths = dict(result.get("paths") or {})
    images = {"tree": paths["plot"]} if paths.get("plot") else {}
    files = {Path(paths[k]).name: paths[k] for k in sorted(paths) if k != "plot"}
    return log_run(cfg, "recovery", metrics=metrics, tables=recovery_tables(tree), images=images, files=files)


def log_analysis(cfg: Any, folders: Mapping[str, str | Path]) -> list[str]:
    """Log an analysis run: per experiment folder (results/<name>/), the numbers of results.json as metrics
    `<name>/...`, every CSV as a table, every PNG as an image and the other files as they are."""
    if not logger_configs(cfg):
        return []
    import pandas as pd

    from common.io import read_json

    metrics: dict[str, float] = {}
    tables: dict[str, Any] = {}
    images: dict[str, Path] = {}
    files: dict[str, Path] = {}
    for name, folder in folders.items():
        folder = Path(folder)
        if (folder / "results.json").is_file():
            metrics.update(flatten_metrics(read_json(folder / "results.json"), f"{name}/"))
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix == ".csv":
                tables[f"{name}/{path.stem}"] = pd.read_csv(path)
            elif path.suffix == ".png":
                images[f"{name}/{path.stem}"] = path
            elif path.suffix in (".json", ".md"):
                files[f"{name}/{path.name}"] = path
    return log_run(cfg, "analysis", metrics=metrics, tables=tables, images=images, files=files)
