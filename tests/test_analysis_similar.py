"""Similar-models experiment: the graph folder helper (synthetic files) and a toy run (2 random-init stand-in
parents x 3 siblings, a few steps; numbers checked for kind and range)."""
from __future__ import annotations

from omegaconf import open_dict

from analysis.trajectories import graph_folder
from common.io import read_json
from tests.a2_helpers import compose_toy, shared_dir, toy_roots


def test_graph_folder_holds_exactly_the_set(tmp_path):
    """Synthetic files: linked in, stale ones removed, roots staged generalization."""
    src = {m: tmp_path / f"src_{m}.safetensors" for m in ("p", "c1", "c2")}
    for m, p in src.items():
        p.write_bytes(m.encode())
    g = tmp_path / "g"
    (g / "models").mkdir(parents=True)
    (g / "models" / "stale.safetensors").write_bytes(b"old")
    graph_folder(g, src, [("p", "c1"), ("p", "c2")])
    assert sorted(p.name for p in (g / "models").iterdir()) == ["c1.safetensors", "c2.safetensors", "p.safetensors"]
    doc = read_json(g / "graph.json")
    assert doc["edges"] == [["p", "c1"], ["p", "c2"]]
    assert doc["stage"] == {"c1": "specialization", "c2": "specialization", "p": "generalization"}
    assert (g / "models" / "c1.safetensors").read_bytes() == b"c1"


def test_similar_toy_run(tmp_path_factory):
    from analysis.experiments import similar_models

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("similar")
    cfg = compose_toy("similar_models", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.similar_models.parents = toy_roots(shared, 2)
    results = similar_models.run(cfg)
    out = tmp / "results" / "similar_models"
    assert {"similar_models.md", "similar_models.tex", "similar_models.csv"} <= {p.name for p in out.iterdir()}
    rows = results["per_parent"]
    assert len(rows) == 2 and all(r["siblings"] == 3 for r in rows)
    for r in rows:
        assert r["parent_child_l2_mean"] > 0 and r["sibling_l2_min"] > 0
        assert r["sibling_l2_min"] <= r["sibling_l2_mean"] and r["parent_child_l2_mean"] <= r["parent_child_l2_max"]
        assert r["siblings_farther"] == (r["ratio_min_sib_over_max_pc"] > 1)
        assert 0.0 <= r["recovery_accuracy"] <= 1.0
    assert 0.0 <= results["edge_accuracy"] <= 1.0 and 0.0 <= results["clustering_accuracy"] <= 1.0
