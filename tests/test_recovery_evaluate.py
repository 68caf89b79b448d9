"""Scoring and plotting against synthetic ground-truth graphs with hand-checked answers."""
from __future__ import annotations

import json

import pytest

from recovery.evaluate import Graph, GraphError, clustering_accuracy, evaluate, load_graph, parse_graph
from recovery.plot import layout, plot_tree

# two true trees: a -> b, a -> c, c -> d   and   x -> y
TRUTH = Graph(["a", "b", "c", "d", "x", "y"], [("a", "b"), ("a", "c"), ("c", "d"), ("x", "y")], "truth.json")
IDS = ["a", "b", "c", "d", "x", "y"]


def test_perfect_recovery():
    m, warnings = evaluate(IDS, list(TRUTH.edges), [0, 0, 0, 0, 1, 1], TRUTH)
    assert warnings == []
    assert m["edge_accuracy"] == m["undirected_accuracy"] == m["clustering_accuracy"] == m["root_accuracy"] == 1.0
    assert m["per_tree"]["a"] == {"n_nodes": 4, "n_edges": 3, "n_correct": 3, "accuracy": 1.0}
    assert m["n_trees_true"] == m["n_trees_pred"] == 2


def test_reversed_misplaced_and_clustering_errors():
    """c -> a reversed (counts undirected only), d hung under b (wrong), y put in a's cluster."""
    edges = [("a", "b"), ("c", "a"), ("b", "d"), ("x", "y")]
    m, _ = evaluate(IDS, edges, [0, 0, 0, 0, 1, 0], TRUTH)
    assert m["edge_accuracy"] == pytest.approx(2 / 4)
    assert m["undirected_accuracy"] == pytest.approx(3 / 4)
    assert m["n_edges_reversed"] == 1 and m["edge_status"]["reversed"] == [["a", "c"]]
    assert m["edge_status"]["wrong"] == [["b", "d"], ["c", "a"]]
    assert m["edge_status"]["missed"] == [["a", "c"], ["c", "d"]]
    assert m["per_tree"]["a"]["accuracy"] == pytest.approx(1 / 3) and m["per_tree"]["x"]["accuracy"] == 1.0
    assert m["clustering_accuracy"] == pytest.approx(5 / 6)
    assert m["root_accuracy"] == pytest.approx(1 / 2)  # a has a parent (c) now; x is still a root


def test_hungarian_matching_ignores_label_names():
    """Cluster numbers are arbitrary: swapping them changes nothing; merging everything matches one tree."""
    roots = TRUTH.roots()
    assert clustering_accuracy(IDS, [7, 7, 7, 7, 3, 3], roots)["clustering_accuracy"] == 1.0
    assert clustering_accuracy(IDS, [0] * 6, roots)["clustering_accuracy"] == pytest.approx(4 / 6)
    assert clustering_accuracy(IDS, list(range(6)), roots)["clustering_accuracy"] == pytest.approx(2 / 6)


def test_ids_missing_from_input_warn_and_count_as_missed():
    ids = ["a", "b", "c", "x", "y", "extra"]
    m, warnings = evaluate(ids, [("a", "b"), ("a", "c"), ("x", "y"), ("y", "extra")], [0, 0, 0, 1, 1, 1], TRUTH)
    assert m["edge_accuracy"] == pytest.approx(3 / 4) and m["missing_from_input"] == ["d"]
    assert m["not_in_ground_truth"] == ["extra"]
    assert any("truth.json" in w and "'d'" in w and "1 edges count as missed" in w for w in warnings)
    assert any("truth.json" in w and "extra" in w for w in warnings)


def test_no_shared_ids_is_an_error():
    with pytest.raises(ValueError, match="truth.json: none of its 6 node ids"):
        evaluate(["p", "q"], [("p", "q")], [0, 0], TRUTH)


def test_load_graph_schemas_and_errors(tmp_path):
    """data_gen's graph.json (extra keys), tree.json-style dict nodes/edges, and malformed files."""
    gen = tmp_path / "graph.json"
    gen.write_text(json.dumps({"nodes": ["r", "s"], "edges": [["r", "s"]], "stage": {}, "meta": {}}))
    assert load_graph(gen).edges == [("r", "s")]
    assert parse_graph({"nodes": [{"id": "r"}, {"id": "s"}], "edges": [{"parent": "r", "child": "s"}]}).edges == [
        ("r", "s")]
    bad = {"no_keys": {"nodes": []}, "unknown id": {"nodes": ["r"], "edges": [["r", "z"]]},
           "more than one parent": {"nodes": ["r", "s", "t"], "edges": [["r", "t"], ["s", "t"]]},
           "cycle": {"nodes": ["r", "s"], "edges": [["r", "s"], ["s", "r"]]},
           "duplicate": {"nodes": ["r", "r"], "edges": []}, "bad edge": {"nodes": ["r"], "edges": [["r"]]}}
    messages = {"no_keys": "'nodes' and 'edges'", "unknown id": "missing from 'nodes'",
                "more than one parent": "more than one parent", "cycle": "cycle", "duplicate": "duplicate",
                "bad edge": "bad edge"}
    for name, data in bad.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=messages[name]) as err:
            load_graph(path)
        assert path.name in str(err.value)
    with pytest.raises(GraphError, match="nothere.json: file not found"):   # a user error: no traceback in run.py
        load_graph(tmp_path / "nothere.json")


def test_layout_and_plot(tmp_path):
    """Parents sit above their children's middle, trees side by side; the PNG renders with and without metrics."""
    pos = layout(IDS, list(TRUTH.edges), {"a": 0, "b": 0, "c": 0, "d": 0, "x": 1, "y": 1})
    assert pos["a"][1] == 0 and pos["d"][1] == -2 and pos["c"][0] == pos["d"][0]
    assert pos["a"][0] == pytest.approx((pos["b"][0] + pos["c"][0]) / 2) and pos["x"][0] > pos["d"][0]
    tree = {"nodes": [{"id": i, "cluster": int(i in "xy")} for i in IDS],
            "edges": [{"parent": p, "child": c} for p, c in [("a", "b"), ("c", "a"), ("b", "d"), ("x", "y")]]}
    m, _ = evaluate(IDS, [(e["parent"], e["child"]) for e in tree["edges"]], [0, 0, 0, 0, 1, 1], TRUTH)
    for name, metrics in (("plain.png", None), ("scored.png", m)):
        path = plot_tree(tree, tmp_path / name, metrics)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
