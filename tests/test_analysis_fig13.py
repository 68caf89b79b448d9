"""Fig. 13 experiment: the direction score per layer type along fine-tuning (toy run on random-init stand-in
roots, checked for kind and range; the q/k/v split is tested on synthetic weights)."""
from __future__ import annotations

import math

from omegaconf import open_dict

from analysis.trajectories import series_stats
from tests.a2_helpers import compose_toy, outlier_trajectory, shared_dir, toy_roots


def test_kinds_split_fused_qkv(tmp_path):
    """Synthetic weights: q, k and v are distinct row blocks of the fused qkv; dense sums attn.proj and mlp."""
    f = outlier_trajectory(tmp_path, [0])
    s = series_stats(f, stats=["variance"], kinds=["query", "key", "value", "dense"], per_layer=True)["variance"]
    names = {k: set(v[0]["per_layer"]) for k, v in s.items()}
    assert len(names["query"]) == len(names["key"]) == len(names["value"]) == 2
    assert not names["query"] & names["key"]
    assert len(names["dense"]) == 2 * 3  # per block: attn.proj, mlp.fc1, mlp.fc2
    assert len({s[k][0]["sum"] for k in ("query", "key", "value")}) == 3


def test_fig13_toy_run(tmp_path_factory):
    from analysis.experiments import fig13_layers

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("fig13")
    cfg = compose_toy("fig13_layers", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.trajectory.scales.toy.roots = toy_roots(shared, 2)
    results = fig13_layers.run(cfg)
    out = tmp / "results" / "fig13_layers"
    assert {"fig13_layers.png", "fig13_layers.md", "fig13_layers.tex"} <= {p.name for p in out.iterdir()}
    assert results["order"] == ["query", "key", "value", "dense"]
    for s in results["series"]:
        assert s["steps"][0] == 0 and all(math.isfinite(v) and v > 0 for v in s["values"])
    for p in results["panels"].values():
        assert all(r is None or -1.0 <= r <= 1.0 for r in p["spearman"].values())
