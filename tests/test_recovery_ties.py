"""Direction ties (recovery.ties): models equal on every direction layer are ordered by the layers they changed.

A LoRA child (attention only) is bit-identical to its parent on the dense layers the default direction score reads,
so without a tie-break their edge follows the files' order; with it, recovery no longer depends on the names.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from recovery.stage import recover
from recovery.synthetic import finetune, random_weights, vit_shapes
from recovery.ties import TieBreak, less_with_ties, tie_groups
from tests.recovery_inputs import write_flat

# root -> full, root -> lora_a, full -> lora_b, lora_a -> lora_aa: three LoRA edges, each a tie on the dense layers
EDGES = [("root", "full"), ("root", "lora_a"), ("full", "lora_b"), ("lora_a", "lora_aa")]
PAPER = {"tree": {"orient": "edges"}}
ROOTED = {"direction": {"cues": True}, "tree": {"orient": "root", "cues": {"kurtosis": 1.0, "variance": 0.0}}}


def _mixed_models(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A small timm-named ViT tree mixing full fine-tunes with fine-tunes of the attention's qkv alone (full-rank
    deltas there, so recovery reads them with the l2 distance, as Table 1's Mixed graph)."""
    rng = np.random.default_rng(seed)
    models = {"root": random_weights(vit_shapes(32, 2), rng)}
    for parent, child in EDGES:
        tuned = finetune(models[parent], rng, "full", scale=2e-2, shrink=5e-3)
        models[child] = tuned if child == "full" else {k: tuned[k] if "qkv" in k else v
                                                       for k, v in models[parent].items()}
    return models


def _run(tmp_path, models: dict, names: dict[str, str], direction: dict | None = None, tree: dict | None = None):
    folder = write_flat(tmp_path / "models", {names[k]: v for k, v in models.items()})
    return recover(folder, distance={"metric": "l2"}, direction=direction, tree=tree, cluster={"n_trees": 1},
                   quiet=True, plot=False)


def _edges(res, names: dict[str, str]) -> set[tuple[str, str]]:
    back = {v: k for k, v in names.items()}
    return {(back[e["parent"]], back[e["child"]]) for e in res["tree"]["edges"]}


NAMINGS = {"parents_first": {k: f"{i}_{k}" for i, k in enumerate(["root", "full", "lora_a", "lora_b", "lora_aa"])},
           "children_first": {k: f"{i}_{k}" for i, k in enumerate(["lora_aa", "lora_b", "lora_a", "full", "root"])}}


def test_tie_groups_and_second_key():
    v = np.array([[1.0, 2.0], [3.0, 1.0], [1.0, 2.0], [5.0, 5.0], [3.0, 1.0], [1.0, 2.0]])
    assert tie_groups(v).tolist() == [0, 1, 0, -1, 1, 0]
    assert tie_groups(v[:1]).tolist() == [-1] and tie_groups(np.zeros((3, 0))).tolist() == [-1] * 3
    ties = TieBreak(tie_groups(v), ["x"], {"kurtosis": np.array([[2.0], [1.0], [1.0], [np.nan], [3.0], [4.0]])},
                    "kurtosis")
    less = less_with_ties(v.sum(1), ties)
    assert less[2, 0] and not less[0, 2]            # one group: the second key decides
    assert less[1, 4] and not less[4, 1]
    assert less[0, 1] == (3.0 < 4.0)                # other pairs: the score, as before
    assert np.array_equal(less_with_ties(v.sum(1), None), v.sum(1)[:, None] < v.sum(1)[None, :])
    sub = ties.subset([0, 3, 4, 5])
    assert sub.groups.tolist() == [0, -1, -1, 0] and sub.members(["a", "b", "c", "d"]) == [["a", "d"]]
    assert ties.subset([4, 1, 2]).groups.tolist() == [0, 0, -1]


@pytest.mark.parametrize("opts", [PAPER, ROOTED], ids=["paper", "rooted"])
def test_lora_edges_follow_the_weights_not_the_names(tmp_path, opts):
    models = _mixed_models()
    for label, names in NAMINGS.items():
        res = _run(tmp_path / label, models, names, **opts)
        assert _edges(res, names) == set(EDGES), label
        ties = res["tree"]["direction_ties"]
        groups = sorted(sorted(names[k] for k in g) for g in (["root", "lora_a", "lora_aa"], ["full", "lora_b"]))
        assert sorted(sorted(g) for g in ties["groups"]) == groups
        assert ties["layers"] == ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"]
        tied = [n for n in res["tree"]["nodes"] if "tie_group" in n]
        assert len(tied) == 5 and all(np.isfinite(n["tie_score"]) for n in tied)
        assert sum("equal on every direction layer" in w for w in res["warnings"]) == 1


def test_without_the_tie_break_the_names_decide(tmp_path):
    """ties=none (the paper's method as written): equal scores, and the edges' directions follow the files."""
    models = _mixed_models()
    got = {label: _edges(_run(tmp_path / label, models, names, direction={"ties": "none"}, **PAPER), names)
           for label, names in NAMINGS.items()}
    assert got["parents_first"] != got["children_first"]
    assert any(got[label] != set(EDGES) for label in got)


def test_folders_without_ties_recover_as_before(tmp_path):
    rng = np.random.default_rng(1)
    models = {"root": random_weights(vit_shapes(32, 2), rng)}
    for parent, child in EDGES:
        models[child] = finetune(models[parent], rng, "full", scale=2e-2, shrink=5e-3)
    names = NAMINGS["children_first"]
    on = _run(tmp_path / "on", models, names, **ROOTED)
    off = _run(tmp_path / "off", models, names, direction={**ROOTED["direction"], "ties": "none"}, tree=ROOTED["tree"])
    assert on["tree"]["edges"] == off["tree"]["edges"] and _edges(on, names) == set(EDGES)
    assert on["tree"]["direction_ties"] == {"groups": [], "layers": []}
    assert not any("direction layer" in w for w in on["warnings"])
    assert on["analysis"].ties is None


def test_ties_the_other_layers_cannot_break_are_named(tmp_path):
    """Two models that differ only on a constant layer (no defined kurtosis): still tied, and the warning says so."""
    rng = np.random.default_rng(2)
    root = random_weights(vit_shapes(32, 2), rng)
    root["extra.weight"] = np.zeros((8, 8), dtype=np.float32)
    child = {**root, "extra.weight": np.ones((8, 8), dtype=np.float32)}
    other = finetune(root, rng, "full", scale=2e-2, shrink=5e-3)
    res = recover(write_flat(tmp_path / "m", {"a": root, "b": child, "c": other}), cluster={"n_trees": 1},
                  quiet=True, plot=False)
    assert res["tree"]["direction_ties"]["groups"] == [["a", "b"]]
    assert "extra.weight" not in res["tree"]["direction_ties"]["layers"]
    msg = [w for w in res["warnings"] if "equal on every direction layer" in w]
    assert len(msg) == 1 and "2 of them (a, b) are equal there too: their edges follow the order of the files" in msg[0]


def test_bad_ties_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"recovery\.direction\.ties"):
        recover(write_flat(tmp_path / "m", _mixed_models()), direction={"ties": "names"}, quiet=True, plot=False)


def test_knn_path_says_it_leaves_ties(tmp_path):
    from recovery.sparse_run import read_folder

    fm = read_folder(write_flat(tmp_path / "m", _mixed_models()))
    msg = [w for w in fm.warnings if "equal on every direction layer" in w]
    assert len(msg) == 1 and msg[0].startswith("direction: 5 models") and "candidates=dense" in msg[0]


def test_name_check_script_recovers_both_namings_alike(tmp_path):
    """scripts/name_check.py: the graph's own names and hashed names give the same accuracy with the tie-break."""
    from common.io import write_json
    from scripts.name_check import hashed, main

    graph = tmp_path / "g"
    write_flat(graph / "models", _mixed_models())
    nodes = sorted({n for e in EDGES for n in e})
    write_json(graph / "graph.json", {"nodes": nodes, "edges": [list(e) for e in EDGES]})
    rows = main([str(graph), "recovery=paper", "recovery.distance.metric=l2", "recovery.cluster.n_trees=1"])
    assert [r["names"] for r in rows] == ["graph names", "hashed names"]
    assert rows[0]["directed"] == rows[1]["directed"] == 1.0 and rows[0]["tied"] == rows[1]["tied"] == 3
    assert hashed("root") != "root" and len(hashed("root")) == 11


def test_premise_share_of_falls_reads_tied_edges_by_their_second_key():
    from types import SimpleNamespace

    from analysis.premises import direction_falls

    groups = np.array([0, 0, -1, 0])   # r, a, b, c: r, a and c equal on the direction layers
    ties = TieBreak(groups, ["qkv"], {"kurtosis": np.array([[5.0], [4.0], [np.nan], [4.5]])}, "kurtosis")
    wa = SimpleNamespace(ids=["r", "a", "b", "c"], direction=np.array([9.0, 9.0, 8.0, 9.0]), ties=ties)
    edges = [["r", "a"], ["r", "b"], ["a", "c"]]   # falls: on qkv; on the score; rises on qkv
    assert direction_falls(edges, wa) == pytest.approx(2 / 3)
    wa.ties = None
    assert direction_falls(edges, wa) == pytest.approx(1 / 3)


def test_ties_with_no_defined_statistic_elsewhere_stay_tied_with_one_warning(tmp_path):
    """Two models that differ only on a constant layer, which is the only layer besides the direction layers."""
    rng = np.random.default_rng(3)
    base = {"blocks.0.mlp.fc1.weight": (0.02 * rng.standard_t(5, size=(16, 8))).astype(np.float32),
            "blocks.0.mlp.fc2.weight": (0.02 * rng.standard_t(5, size=(8, 16))).astype(np.float32),
            "extra.weight": np.zeros((8, 8), dtype=np.float32)}
    models = {"a": base, "b": {**base, "extra.weight": np.ones((8, 8), dtype=np.float32)},
              "c": {k: (v * 1.01 if "fc" in k else v) for k, v in base.items()}}
    for cues in (False, True):
        res = recover(write_flat(tmp_path / f"m{cues}", models), direction={"cues": cues},
                      tree={"orient": "root"} if cues else None, cluster={"n_trees": 1}, quiet=True, plot=False)
        assert res["tree"]["direction_ties"] == {"groups": [], "layers": []} and res["analysis"].ties is None
        msg = [w for w in res["warnings"] if "equal on every direction layer" in w]
        assert len(msg) == 1 and "no other selected layer gives a defined kurtosis" in msg[0]
