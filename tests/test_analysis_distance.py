"""Smoke tests at toy scale for Fig. 1 (distance vs edge distance), Fig. 6 (clustering vs size) and the c sweep.

Synthetic graphs (analysis.graphs.write_synthetic_graph): mechanics and ranges, not the paper's claims.
"""
from __future__ import annotations

import json

from analysis import stage
from analysis.experiments.fig1_distance import hop_distances
from analysis.experiments.fig6_clustering import draw


def _results(tmp_path, name):
    return json.loads((tmp_path / "results" / name / "results.json").read_text())


def test_hop_distances_on_a_small_tree():
    edges = [["r", "a"], ["r", "b"], ["a", "c"]]
    hops = hop_distances(["r", "a", "b", "c"], edges)
    assert hops["c"]["b"] == 3 and hops["a"]["r"] == 1 and hops["b"]["b"] == 0


def test_draw_keeps_every_tree():
    import numpy as np

    tree_of = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    for seed in range(5):
        idx = draw(np.random.default_rng(seed), tree_of, 3)
        assert sorted(tree_of[idx]) == [0, 1, 2]


def test_fig1_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=fig1_distance", "analysis.scale=toy"]))
    panels = _results(tmp_path, "fig1_distance")["panels"]
    assert set(panels) == {"l2 (full fine-tuning)", "rank (LoRA)"}
    for p in panels.values():
        assert p["n_models"] == 7 and len(p["hops"]) == 21 == len(p["distance"])    # 7 models: 21 pairs
        assert -1.0 <= p["rho"] <= 1.0 and 0.0 <= p["nearest_is_neighbour"] <= 1.0
        assert set(p["hops"]) == {1, 2, 3, 4}
    # mechanical on synthetic data: dense deltas add up, so l2 grows with edge distance
    l2 = panels["l2 (full fine-tuning)"]["mean_by_hops"]
    assert l2["1"] < l2["2"] < l2["4"]
    assert panels["rank (LoRA)"]["metric"] == "lora_rank"
    assert (tmp_path / "results" / "fig1_distance" / "fig1_distance.png").is_file()


def test_fig6_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=fig6_clustering", "analysis.scale=toy"]))
    res = _results(tmp_path, "fig6_clustering")
    rows = res["panels"]["FT"]["rows"]
    assert {(r["models"], r["n_trees"]) for r in rows} == {(n, m) for n in (3, 6, 9) for m in ("known", "auto")}
    for r in rows:
        assert r["draws"] == 3 and 0.0 <= r["min"] <= r["mean"] <= 1.0 and r["std"] >= 0.0
    # with the true number of trees, 3 models from 3 trees are trivially one per cluster
    assert next(r for r in rows if r["models"] == 3 and r["n_trees"] == "known")["mean"] == 1.0
    assert (tmp_path / "results" / "fig6_clustering" / "fig6_clustering.png").is_file()


def test_c_sensitivity_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=c_sensitivity", "analysis.scale=toy"]))
    res = _results(tmp_path, "c_sensitivity")
    assert res["cs"] == [0.1, 0.3, 3.0]
    accs = res["subgraphs"]["FT"]["accuracy"]
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)


def test_c_outside_range_fails(cfg_factory):
    import pytest

    cfg = cfg_factory(["+experiment=c_sensitivity", "analysis.scale=toy", "analysis.c_sensitivity.scales.toy.cs=[5.0]"])
    with pytest.raises(ValueError, match=r"outside \(0, 5\)"):
        stage.run(cfg)
