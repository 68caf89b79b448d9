"""Fig. 13 experiment: the direction score per layer type along fine-tuning (toy run on random-init stand-in
roots: step 0 against numpy on the root files, the panels against their series; the q/k/v split is tested on
synthetic weights)."""
from __future__ import annotations

import math

import pytest
from omegaconf import open_dict

from analysis.trajectories import series_stats
from tests.toy_runs import check_panels, compose_toy, direct_sum, outlier_trajectory, shared_dir, toy_roots


def test_kinds_split_fused_qkv(tmp_path):
    """Synthetic weights: q, k and v are distinct row blocks of the fused qkv; dense sums attn.proj and mlp."""
    f = outlier_trajectory(tmp_path, [0])
    s = series_stats(f, stats=["variance"], kinds=["query", "key", "value", "dense"], per_layer=True)["variance"]
    names = {k: set(v[0]["per_layer"]) for k, v in s.items()}
    assert len(names["query"]) == len(names["key"]) == len(names["value"]) == 2
    assert not names["query"] & names["key"]
    assert len(names["dense"]) == 2 * 3  # per block: attn.proj, mlp.fc1, mlp.fc2
    assert len({s[k][0]["sum"] for k in ("query", "key", "value")}) == 3
    for k in ("query", "key", "value", "dense"):  # q, k, v: the row thirds of qkv, by direct numpy
        assert s[k][0]["sum"] == pytest.approx(direct_sum(f[0], "variance", k), rel=1e-9), k


@pytest.mark.slow
def test_fig13_toy_run(tmp_path_factory):
    from analysis.experiments import fig13_layers

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("fig13")
    cfg = compose_toy("fig13_layers", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.trajectory.roots = toy_roots(shared, 2)
    results = fig13_layers.run(cfg)
    out = tmp / "results" / "fig13_layers"
    assert {"fig13_layers.png", "fig13_layers.md", "fig13_layers.tex"} <= {p.name for p in out.iterdir()}
    assert results["order"] == ["query", "key", "value", "dense"]
    assert len(results["series"]) == 4 * 2
    for s in results["series"]:
        assert s["steps"][0] == 0 and all(math.isfinite(v) for v in s["values"])
        # step 0 is the root: kurtosis of its q / k / v thirds of qkv or of its dense layers, summed over blocks
        assert s["values"][0] == pytest.approx(direct_sum(s["root"], "kurtosis", s["kind"]), rel=1e-6)
    check_panels(results)
