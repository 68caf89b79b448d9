"""analysis.sweep on a synthetic multirun folder (hand-written job folders, no Hydra run, no SLURM)."""
from __future__ import annotations

import math

import pytest

from analysis.sweep import collect_sweep, summarize
from common.io import write_json, write_text


def _job(sweep, num, overrides, metrics=None):
    job = sweep / str(num)
    write_text(job / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        write_json(job / "metrics.json", metrics)


def test_collect_and_summarize(tmp_path):
    """Swept overrides become columns (constant ones dropped), nested results are flattened, a job without
    results is reported as missing, and summarize averages over the seed repeats."""
    sweep = tmp_path / "sweep"
    accs = {(0.1, 0): 0.5, (0.1, 1): 0.7, (1.0, 0): 0.9}
    for num, ((c, seed), acc) in enumerate(accs.items()):
        _job(sweep, num, ["+experiment=recover", f"recovery.tree.c={c}", f"seed={seed}", "hydra.launcher.x=1"],
             {"edge_accuracy": acc, "per_tree": {"a": {"accuracy": acc}}, "edges": [[1, 2]]})
    _job(sweep, 3, ["+experiment=recover", "recovery.tree.c=1.0", "seed=1", "hydra.launcher.x=1"])
    (sweep / "multirun.yaml").write_text("x: 1\n")

    df = collect_sweep(sweep)
    assert list(df.columns[:4]) == ["job", "recovery.tree.c", "seed", "status"]
    assert df["status"].tolist() == ["ok", "ok", "ok", "missing"]
    assert df["per_tree.a.accuracy"].tolist()[:3] == [0.5, 0.7, 0.9]
    assert "edges" not in df.columns  # a list of lists is not a table cell

    s = summarize(df, over="seed")
    assert s["recovery.tree.c"].tolist() == [0.1, 1.0]
    assert s["n"].tolist() == [2, 1] and s["missing"].tolist() == [0, 1]
    assert s["edge_accuracy_mean"].tolist() == pytest.approx([0.6, 0.9])
    assert s["edge_accuracy_std"].tolist() == pytest.approx([0.1, 0.0])
    assert not math.isnan(s["per_tree.a.accuracy_mean"][0])

    full = collect_sweep(sweep, all_overrides=True, fields=["edge_accuracy"])
    assert "experiment" in full.columns and list(full.columns[-2:]) == ["status", "edge_accuracy"]


def test_bad_sweeps_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep folder not found"):
        collect_sweep(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sweep job folders"):
        collect_sweep(tmp_path / "empty")
    _job(tmp_path / "s", 0, ["a=1"], {"x": 1})
    with pytest.raises(KeyError, match=r"no field\(s\) \['y'\]"):
        collect_sweep(tmp_path / "s", fields=["y"])
    write_text(tmp_path / "s" / "0" / "metrics.json", "{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        collect_sweep(tmp_path / "s")
