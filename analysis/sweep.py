"""Assemble one table from a Hydra multirun sweep: one row per sweep job, its overrides beside its results.

A sweep (`python run.py -m hydra/launcher=slurm recovery.tree.c=0.1,0.3,1.0 seed=0,1,2`) leaves one folder per
job under the sweep folder: `<sweep>/<job num>/.hydra/overrides.yaml` (the job's own overrides) and whatever the
stages wrote there (recovery: `metrics.json`; analysis with `paths.results_dir` pointed into the job folder:
`results/<experiment>/results.json`). `collect_sweep` reads them all back; `summarize` averages over repeats.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from common.io import read_json


def sweep_jobs(sweep_dir: str | Path) -> list[Path]:
    """The job folders of a multirun sweep (numeric names holding `.hydra/overrides.yaml`), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: sweep folder not found")
    jobs = [p for p in sweep_dir.iterdir() if p.name.isdigit() and (p / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise ValueError(f"{sweep_dir}: no sweep job folders (<num>/.hydra/overrides.yaml); is this a multirun folder?")
    return sorted(jobs, key=lambda p: int(p.name))


def job_overrides(job_dir: str | Path) -> dict[str, Any]:
    """A job's command-line overrides as {key: value} (values parsed as YAML; `hydra.*` left out)."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of 'key=value' strings, got {type(items).__name__}")
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; scalars kept, lists of scalars kept as lists, anything else dropped."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[name] = value
        elif isinstance(value, list) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            out[name] = value
    return out


def collect_sweep(sweep_dir: str | Path, results: str = "metrics.json", *, fields: Iterable[str] | None = None,
                  all_overrides: bool = False) -> pd.DataFrame:
    """One row per job: `job`, the swept overrides, `status` ("ok" or "missing"), and its results JSON fields.

    Args:
        sweep_dir: the multirun folder (`hydra.sweep.dir`).
        results: the results file, relative to each job folder; a glob pattern is allowed
            (`results/*/results.json`), each match then gives a row with its path in `results_file`.
        fields: dotted result keys to keep (default: every scalar field).
        all_overrides: also keep overrides that are equal in every job (default: only those that vary).
    """
    fields = list(fields) if fields is not None else None
    jobs = sweep_jobs(sweep_dir)
    overrides = {job: job_overrides(job) for job in jobs}
    if not all_overrides and len(jobs) > 1:
        keys = {k for o in overrides.values() for k in o}
        swept = {k for k in keys if len({repr(o.get(k)) for o in overrides.values()}) > 1}
        overrides = {job: {k: v for k, v in o.items() if k in swept} for job, o in overrides.items()}
    rows = []
    for job in jobs:
        base = {"job": int(job.name), **overrides[job]}
        files = sorted(job.glob(results))
        if not files:
            rows.append({**base, "status": "missing"})
            continue
        for f in files:
            data = read_json(f)
            if not isinstance(data, Mapping):
                raise ValueError(f"{f}: expected a JSON object, got {type(data).__name__}")
            flat = flatten(data)
            if fields is not None:
                unknown = [k for k in fields if k not in flat]
                if unknown:
                    raise KeyError(f"{f}: no field(s) {unknown}; available: {sorted(flat)}")
                flat = {k: flat[k] for k in fields}
            extra = {"results_file": str(f.relative_to(job))} if len(files) > 1 or any(c in results for c in "*?[") else {}
            rows.append({**base, "status": "ok", **extra, **flat})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, over: str = "seed", metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean, std (population) and count of numeric `metrics` over the repeats in column `over`.

    Rows are grouped by every other override column (the columns between `job` and `status`); jobs whose
    results are missing are left out of the means and counted in `missing`.
    """
    cols = list(df.columns)
    if "status" not in cols:
        raise ValueError("not a collect_sweep table: no 'status' column")
    overrides = cols[cols.index("job") + 1:cols.index("status")]
    if over not in overrides:
        raise KeyError(f"{over!r} is not a swept override; overrides: {overrides}")
    keys = [c for c in overrides if c != over]
    ok = df[df["status"] == "ok"]
    if metrics is None:
        metrics = [c for c in cols[cols.index("status") + 1:]
                   if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    metrics = list(metrics)
    out = []
    groups = df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        good = ok.loc[ok.index.intersection(group.index)]
        row["n"] = len(good)
        row["missing"] = len(group) - len(good)
        for m in metrics:
            vals = [float(v) for v in good[m] if v is not None and not (isinstance(v, float) and math.isnan(v))]
            mean = sum(vals) / len(vals) if vals else float("nan")
            row[f"{m}_mean"] = mean
            row[f"{m}_std"] = (math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if vals else float("nan"))
        out.append(row)
    return pd.DataFrame(out)
