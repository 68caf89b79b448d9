"""Fig. 2 experiment: trend metrics, the fine-tune cache, checkpoint statistics and a toy-scale run.

The unit tests use synthetic data (hand-made series, synthetic checkpoints whose outliers shrink, a fake
fine-tune): they test the mechanics, not the paper's hypotheses. The toy run fine-tunes random-init
stand-in roots for a few steps: its first points are checked against direct numpy on the root files and the
synthetic checkpoints, its trend numbers against their series (recomputed by hand).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from analysis.finetunes import cached_finetune, checkpoint_series
from analysis.trajectories import series_stats, trajectory_files
from analysis.trends import monotone_fraction, spearman, trend
from common.io import read_json
from tests.toy_runs import (BUILTIN_VAL, compose_toy, direct_sum, is_count_of, outlier_trajectory, shared_dir,
                              spearman_np, toy_roots)


def test_trend_metrics_on_hand_made_series():
    """Synthetic series: monotone fraction and Spearman against hand-computed values."""
    assert monotone_fraction([5, 4, 4.5, 3], -1) == pytest.approx(2 / 3)
    assert monotone_fraction([1, 2, 3], 1) == 1.0
    assert monotone_fraction([1], 1) is None
    assert spearman([0, 1, 2, 3], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [1, 1, 1]) is None  # constant: undefined, not NaN
    t = trend([0, 10, 20, 30], [4.0, 3.0, 3.5, 2.0], sign=-1)
    assert t["n_points"] == 4 and t["first"] == 4.0 and t["last"] == 2.0
    assert t["spearman"] == pytest.approx(-0.8) and t["agrees"] is True


def test_checkpoint_series_sorted_numerically(tmp_path):
    for s in (10, 2, 0):
        (tmp_path / f"step_{s}.safetensors").write_bytes(b"x")
    (tmp_path / "other.txt").write_text("x")
    assert [s for s, _ in checkpoint_series(tmp_path)] == [0, 2, 10]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no step_"):
        checkpoint_series(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint_series(tmp_path / "missing")


def test_series_stats_follow_shrinking_outliers(tmp_path):
    """Synthetic checkpoints W_t = G + a_t O (a_t falling): summed kurtosis over dense layers must fall, rise
    for growing outliers, and q/k/v parts of the fused qkv are separate kinds."""
    steps = [0, 5, 10, 15, 20]
    down = outlier_trajectory(tmp_path / "down", steps, shrink=True)
    up = outlier_trajectory(tmp_path / "up", steps, shrink=False)
    k_down = series_stats(down, stats=["kurtosis"], kinds=["dense"])["kurtosis"]["dense"]
    k_up = series_stats(up, stats=["kurtosis"], kinds=["dense"])["kurtosis"]["dense"]
    assert trend(steps, k_down, -1)["monotone_fraction"] == 1.0
    assert trend(steps, k_up, 1)["monotone_fraction"] == 1.0
    per = series_stats(down[:1], stats=["kurtosis", "variance"], kinds=["query", "dense"], per_layer=True)
    q = per["kurtosis"]["query"][0]
    assert len(q["per_layer"]) == 2 and all("[q" in n or "qkv" in n for n in q["per_layer"])
    assert q["sum"] == pytest.approx(sum(q["per_layer"].values()))
    assert not any(n.startswith("head") for n in per["kurtosis"]["dense"][0]["per_layer"])  # heads left out


@pytest.mark.slow
def test_cached_finetune_trains_once_and_retrains_stale(tmp_path, monkeypatch):
    """A fake fine-tune (writes a weights file) is called once per spec; a changed file is retrained."""
    import data_gen.finetune as ft
    from common.io import sha256_file

    calls = []

    class Task:
        num_classes = 3

    def fake(*, out_dir, node_id, checkpoint_every, **kw):
        calls.append(node_id)
        w = out_dir / "models" / f"{node_id}.safetensors"
        w.parent.mkdir(parents=True, exist_ok=True)
        w.write_bytes(b"weights" + bytes(len(calls)))
        ck = out_dir / "checkpoints" / node_id
        ck.mkdir(parents=True, exist_ok=True)
        for s in (0, checkpoint_every):
            (ck / f"step_{s}.safetensors").write_bytes(b"c")
        return {"val_accuracy": 0.5, "weights": str(w), "sha256": sha256_file(w), "steps": 3}

    monkeypatch.setattr(ft, "finetune", fake)
    kw = dict(spec={"a": 1}, arch="x", init_state=lambda: pytest.fail("loaded for a cached model"), task=Task,
              recipe={"lr": 0.1}, checkpoint_every=2)
    kw_first = {**kw, "init_state": lambda: {}}
    r1 = cached_finetune(tmp_path, "m", **kw_first)
    r2 = cached_finetune(tmp_path, "m", **kw)
    assert calls == ["m"] and r1["cached"] is False and r2["cached"] is True and r2["num_classes"] == 3
    # step 0 is the run's own step-0 checkpoint (the weights it started from), the init file only without one
    assert trajectory_files({**r2, "init_file": "init"}) == ([0, 2, 3], [r2["checkpoints"][0][1],
                                                                          r2["checkpoints"][1][1], r2["weights"]])
    no_start = {**r2, "init_file": "init", "checkpoints": r2["checkpoints"][1:]}
    assert trajectory_files(no_start) == ([0, 2, 3], ["init", r2["checkpoints"][1][1], r2["weights"]])
    (tmp_path / "models" / "m.safetensors").write_bytes(b"corrupt")
    r3 = cached_finetune(tmp_path, "m", **kw_first)
    assert calls == ["m", "m"] and r3["cached"] is False


@pytest.fixture(scope="module")
def fig2_results(tmp_path_factory):
    """Toy-scale Fig. 2 run: two random-init stand-in roots fine-tuned a few steps; the pre-training panel
    reads synthetic checkpoints with growing outliers (stand-ins for a root's pre-training)."""
    from analysis.experiments import fig2_direction

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("fig2")
    roots = toy_roots(shared, 2)
    cfg = compose_toy("fig2_direction", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.trajectory.roots = roots
        cfg.analysis.fig2_direction.pretraining = {
            r: str(outlier_trajectory(tmp / f"pre{i}", [0, 50, 100, 150], seed=i, shrink=False)[0].parent)
            for i, r in enumerate(roots)}
    return fig2_direction.run(cfg), tmp / "results" / "fig2_direction"


@pytest.mark.slow
def test_fig2_toy_run(fig2_results):
    results, out = fig2_results
    assert {"fig2_direction.png", "fig2_direction.md", "fig2_direction.tex", "fig2_direction.csv",
            "results.json", "experiment.json"} <= {p.name for p in out.iterdir()}
    series = results["series"]
    assert [s["panel"] for s in series].count("generalization") == 2
    assert [s["panel"] for s in series].count("specialization") == 2
    for s in series:
        assert len(s["steps"]) == len(s["values"]) >= 3 and s["steps"] == sorted(s["steps"])
        assert all(math.isfinite(v) for v in s["values"])
        t = s["trend"]   # recomputed by hand: steps moving the expected way, Spearman rho with the step
        assert t["monotone_fraction"] == pytest.approx(np.mean(np.diff(s["values"]) * s["sign"] > 0))
        assert t["spearman"] == pytest.approx(spearman_np(s["steps"], s["values"]), abs=1e-9)
        assert t["agrees"] == (t["spearman"] * s["sign"] > 0)
    spec = [s for s in series if s["panel"] == "specialization"]
    for s in spec:   # step 0 is the root itself: kurtosis summed over its dense layers, by direct numpy
        assert s["steps"][0] == 0 and s["values"][0] == pytest.approx(direct_sum(s["root"], "kurtosis"), rel=1e-6)
        assert is_count_of(s["val_accuracy"], BUILTIN_VAL)          # correct / validation images
    pre = [s for s in series if s["panel"] == "generalization"]
    for i, s in enumerate(pre):   # the synthetic pre-training checkpoints written by the fixture (outliers grow)
        first = out.parent.parent / f"pre{i}" / "step_0.safetensors"
        assert s["steps"] == [0, 50, 100, 150] and s["values"][0] == pytest.approx(direct_sum(first, "kurtosis"))
    gen = results["summary"]["generalization"]
    assert gen["agree"] == 2 and gen["mean_monotone_fraction"] == 1.0  # synthetic growing outliers: mechanical
    rec = read_json(out / "experiment.json")
    assert rec["scale"] == "toy" and "generalization: 2/2" in rec["ours"]
    assert np.isclose(read_json(out / "results.json")["series"][0]["values"][0], series[0]["values"][0])
