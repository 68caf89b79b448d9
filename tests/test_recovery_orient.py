"""Direction cues (recovery.cues), tree-consistent orientation and family geometry (recovery.orient).

Synthetic vectors and trees with known answers: mechanics only, not evidence about real fine-tunes.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.cues import cue_matrices, init_distance, layer_moments, pair_votes, stats_from_moments
from recovery.direction import weight_stat
from recovery.orient import (ancestor_matrix, best_rooting, missing_parents, place_siblings, root_at,
                             spanning_edges)


def test_moments_give_the_direction_stats():
    rng = np.random.default_rng(0)
    y = rng.standard_t(4, size=(3, 40, 30)).astype(np.float32)
    stats = stats_from_moments(layer_moments(y))
    for i in range(3):
        assert stats["kurtosis"][i] == pytest.approx(weight_stat(y[i], "kurtosis"), rel=1e-12)
        assert stats["variance"][i] == pytest.approx(weight_stat(y[i], "variance"), rel=1e-12)
    assert np.isnan(stats_from_moments(layer_moments(np.ones((1, 5, 5), np.float32)))["kurtosis"][0])


def test_init_distance_is_the_distance_to_one_seeded_init():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((4, 16, 8)).astype(np.float32)
    d = init_distance(y, "blocks.0.mlp.fc1.weight", seed=3)
    again = init_distance(y[::-1].copy(), "blocks.0.mlp.fc1.weight", seed=3)[::-1]
    np.testing.assert_allclose(d, again, rtol=1e-6)          # one W0 for every model, whatever the order
    other = init_distance(y, "blocks.0.mlp.fc1.weight", seed=4)
    assert not np.allclose(d, other)
    # a scaled-up copy of a model is farther from the init (the cue: descendants move away from it)
    grown = init_distance(np.stack([y[0], 1.5 * y[0]]), "x", seed=0)
    assert grown[1] > grown[0]


def test_pair_votes_are_antisymmetric_and_bounded():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((6, 5))
    for reduce in ("votes", "sum"):
        m = pair_votes(v, reduce)
        np.testing.assert_allclose(m, -m.T)
        assert np.abs(m).max() <= 1 and np.all(np.diag(m) == 0)
    votes = pair_votes(np.array([[3.0, 3.0, 0.0], [1.0, 1.0, 9.0]]), "votes")
    assert votes[0, 1] == pytest.approx(1 / 3)                 # two layers of three say 0 > 1
    assert pair_votes(np.array([[3.0, 3.0, 0.0], [1.0, 1.0, 9.0]]), "sum")[0, 1] == -1
    with pytest.raises(ValueError, match="unknown direction cue"):
        cue_matrices({"kurtosis": v}, {"kurtosis": 1.0, "shape": 1.0})


def _random_tree(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([-1] + [int(rng.integers(0, j)) for j in range(1, n)])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 14), seed=st.integers(0, 10_000))
def test_spanning_edges_match_networkx(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    ours = sum(d[i, j] for i, j in spanning_edges(d))
    g = nx.Graph()
    g.add_weighted_edges_from((i, j, d[i, j]) for i in range(n) for j in range(i + 1, n))
    theirs = nx.minimum_spanning_tree(g).size(weight="weight")
    assert len(spanning_edges(d)) == n - 1 and ours == pytest.approx(theirs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 10_000), flip=st.booleans())
def test_best_rooting_finds_the_root_that_the_votes_imply(n, seed, flip):
    parent = _random_tree(n, seed)
    edges = [(min(j, p), max(j, p)) for j, p in enumerate(parent) if p >= 0]
    a = ancestor_matrix(parent).astype(float)
    truth = a - a.T                                  # a perfect cue: +1 for every ancestor -> descendant pair
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)                        # node order must not matter
    inv = np.argsort(perm)
    relabel = [(min(inv[i], inv[j]), max(inv[i], inv[j])) for i, j in edges]
    v = truth[np.ix_(perm, perm)]
    zero = np.zeros((n, n))
    # stage-free cue, then a kurtosis-like stage cue of a generalization tree (sign flipped) with the stage auto
    got, sign, _ = best_rooting(relabel, n, zero, v, np.ones(n))
    assert got.tolist() == [inv[p] if p >= 0 else -1 for p in parent[perm]]
    got, sign, ev = best_rooting(relabel, n, -v if flip else v, zero, None)
    kids = np.bincount(parent[parent >= 0], minlength=n)
    if kids.max() >= 2:   # on a chain, reversing every edge and the stage explains a stage cue equally well
        assert got.tolist() == [inv[p] if p >= 0 else -1 for p in parent[perm]]
        assert ev["auto_stage"] == ("generalization" if flip else "specialization")
    else:
        assert ev["margin"] == pytest.approx(0.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 10_000), auto=st.booleans())
def test_edge_only_rooting_matches_the_brute_force(n, seed, auto):
    """max_hops=1 scores every root in O(n) by rerooting; it must equal scoring each rooting's edges directly."""
    rng = np.random.default_rng(seed)
    parent = _random_tree(n, seed)
    edges = [(min(j, p), max(j, p)) for j, p in enumerate(parent) if p >= 0]
    v_stage, v_free = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    sign = None if auto else np.where(rng.random(n) < 0.3, -1.0, 1.0)
    fast = best_rooting(edges, n, v_stage, v_free, sign, max_hops=1)
    import recovery.orient as orient
    brute_scores = []
    for s in ([1, -1] if auto else [0]):
        for r in range(n):
            a = orient.ancestor_matrix(orient.root_at(n, edges, r), 1)
            cost = 0.0 if auto else ((sign[:, None] > 0) & (sign[None, :] < 0)) * max(
                float(np.abs(v_free).max() + np.abs(v_stage).max()), 1.0)
            w = v_free + (sign[None, :] if s == 0 else s) * v_stage - cost
            brute_scores.append(float((a * w).sum()))
    assert fast[2]["root_score"] == pytest.approx(max(brute_scores))


def test_given_stages_keep_generalization_nodes_above_specialization():
    edges = [(0, 1), (1, 2)]
    v_stage = np.zeros((3, 3))
    v_stage[2, 1] = v_stage[1, 0] = 1.0                # the cue alone says 2 -> 1 -> 0
    v_stage -= v_stage.T
    sign = np.array([-1.0, 1.0, 1.0])                  # node 0 is the generalization (pretrained) node
    parent, _, _ = best_rooting(edges, 3, v_stage, np.zeros((3, 3)), sign)
    assert parent[0] == -1


def _geometry(vectors: dict[int, np.ndarray]) -> np.ndarray:
    x = np.stack([vectors[i] for i in range(len(vectors))])
    return ((x[:, None] - x[None]) ** 2).sum(-1)


def test_place_siblings_moves_same_recipe_siblings_and_keeps_true_chains():
    rng = np.random.default_rng(0)
    dim = 4000
    p = rng.standard_normal(dim)
    shared = rng.standard_normal(dim)                  # the recipe's change, common to both siblings
    a = p + shared + 0.4 * rng.standard_normal(dim)
    b = p + shared + 0.4 * rng.standard_normal(dim)
    c = a + rng.standard_normal(dim)                   # a true child of a (independent change)
    sq = _geometry({0: p, 1: a, 2: b, 3: c})
    chain = np.array([-1, 0, 1, 1])                    # recovered p -> a -> b and a -> c
    parent, moves = place_siblings(chain, sq)
    assert parent.tolist() == [-1, 0, 0, 1]
    assert [(m["node"], m["from"], m["to"]) for m in moves] == [(2, 1, 0)]


def test_missing_parents_reports_children_of_a_removed_node():
    rng = np.random.default_rng(1)
    dim = 4000
    root = rng.standard_normal(dim)
    gone = root + rng.standard_normal(dim)             # removed from the folder
    kids = [gone + rng.standard_normal(dim) for _ in range(3)]
    other = root + rng.standard_normal(dim)            # a real child of root
    sq = _geometry({0: root, 1: kids[0], 2: kids[1], 3: kids[2], 4: other})
    parent = np.array([-1, 0, 0, 0, 0])                # recovery can only hang them on root
    found = missing_parents(parent, sq)
    assert [f["models"] for f in found] == [[1, 2, 3]]
    assert found[0]["attached_to"] == 0 and found[0]["missing_edge_l2"] == pytest.approx(np.sqrt(dim), rel=0.1)
    assert missing_parents(np.array([-1, 0, 0, 0, 0]), _geometry({0: root, 1: other, 2: gone,
                                                                   3: root + rng.standard_normal(dim),
                                                                   4: root + rng.standard_normal(dim)})) == []


def test_root_at_and_bad_edges():
    assert root_at(3, [(0, 1), (1, 2)], 2).tolist() == [1, 2, -1]
    with pytest.raises(ValueError, match="span"):
        root_at(4, [(0, 1), (2, 3)], 0)


# ------------------------------------------------------------------ end to end through recovery.stage.recover

def test_recover_with_tree_consistent_orientation_and_cues(tmp_path):
    """orient=root with per-layer kurtosis votes + init distance, auto stage, truth clusters: the synthetic forest
    comes back exactly; tree.json records the orientation evidence."""
    from recovery.stage import recover
    from tests.test_recovery_stage import synthetic_forest, write_flat, write_truth

    models, edges = synthetic_forest(seed=3)
    flat = write_flat(tmp_path / "flat", models)
    truth = write_truth(tmp_path / "truth.json", models, edges)
    res = recover(flat, ground_truth=truth, quiet=True, plot=False, output_dir=tmp_path / "out",
                  direction={"cues": True}, cluster={"n_trees": "truth"},
                  tree={"orient": "root", "cue_reduce": "votes", "stage": "auto", "missing": True,
                        "cues": {"kurtosis": 1.0, "init_distance": 1.0}})
    assert res["metrics"]["edge_accuracy"] == 1.0 and res["metrics"]["clustering_accuracy"] == 1.0
    trees = res["tree"]["trees"]
    assert {t["orientation"]["auto_stage"] for t in trees} == {"specialization"}
    assert all(t["orientation"]["margin"] > 0 for t in trees) and res["tree"]["missing_parents"] == []


def test_recover_with_centrality_alone(tmp_path):
    """The centrality cue needs no per-layer values: direction.cues may stay off."""
    from recovery.stage import recover
    from tests.test_recovery_stage import synthetic_forest, write_flat, write_truth

    models, edges = synthetic_forest(seed=3)
    res = recover(write_flat(tmp_path / "flat", models), ground_truth=write_truth(tmp_path / "t.json", models, edges),
                  quiet=True, plot=False, cluster={"n_trees": "truth"},
                  tree={"orient": "root", "cues": {"centrality": 1.0}, "cue_reduce": "votes", "max_hops": 1})
    assert res["metrics"]["edge_accuracy"] == 1.0


def test_recover_reports_a_missing_parent(tmp_path):
    """Drop one internal model: its children hang on the grandparent, and the report names them."""
    from recovery.stage import recover
    from tests.test_recovery_stage import synthetic_forest, write_flat

    models, edges = synthetic_forest(n_trees=1, children=3, grandchildren=3, seed=4)
    del models["t0_c1"]
    res = recover(write_flat(tmp_path / "flat", models), quiet=True, plot=False, cluster={"n_trees": 1},
                  direction={"cues": True}, tree={"orient": "root", "siblings": True, "missing": True, "max_hops": 2,
                                                  "cues": {"kurtosis": 1.0, "init_distance": 1.0}})
    groups = res["tree"]["missing_parents"]
    assert [sorted(g["models"]) for g in groups] == [["t0_c1_g0", "t0_c1_g1", "t0_c1_g2"]]
    assert groups[0]["attached_to"] == "t0_root"
    assert any("missing from the folder" in w for w in res["warnings"])


def test_truth_clusters_need_a_ground_truth(tmp_path):
    from recovery.stage import recover
    from tests.test_recovery_stage import synthetic_forest, write_flat

    models, _ = synthetic_forest(n_trees=1, children=1, grandchildren=1)
    with pytest.raises(ValueError, match="needs ground_truth"):
        recover(write_flat(tmp_path / "flat", models), quiet=True, cluster={"n_trees": "truth"})
    with pytest.raises(ValueError, match="recovery.tree: unknown option"):
        recover(write_flat(tmp_path / "flat", models), quiet=True, tree={"orientation": "root"})


def test_missing_parents_min_shared_and_chained_orphans():
    """A small shared change (same task, not a missing model) is ignored with min_shared; orphans that recovery
    chained onto one another (x -> b -> c) are found when the report first hangs c next to b (tau)."""
    rng = np.random.default_rng(2)
    dim = 4000
    root = rng.standard_normal(dim)
    common = 0.3 * rng.standard_normal(dim)            # a shared drift ~0.09 of an edge (squared)
    kids = [root + common + rng.standard_normal(dim) for _ in range(2)]
    other = root + rng.standard_normal(dim)
    sq = _geometry({0: root, 1: kids[0], 2: kids[1], 3: other})
    parent = np.array([-1, 0, 0, 0])
    assert [f["models"] for f in missing_parents(parent, sq, ratio=1.0)] == [[1, 2]]
    assert missing_parents(parent, sq, ratio=1.0, min_shared=0.25) == []
    gone = root + rng.standard_normal(dim)
    orphans = [gone + rng.standard_normal(dim) for _ in range(2)]
    sq = _geometry({0: root, 1: orphans[0], 2: orphans[1], 3: other})
    chained = np.array([-1, 0, 1, 0])                  # the second orphan hung on the first
    assert missing_parents(chained, sq) == []
    found = missing_parents(chained, sq, tau=0.5, min_shared=0.25)
    assert [f["models"] for f in found] == [[1, 2]] and found[0]["attached_to"] == 0


def test_centrality_roots_a_bushy_family_at_its_base_and_a_chain_in_its_middle():
    """S(x) = sum of squared distances to the tree's models is lowest at the tree's weighted median: the base
    model of a bushy family, but the middle of a chain (why it is one cue among others)."""
    from recovery.cues import centrality, cue_matrices

    rng = np.random.default_rng(3)
    dim = 4000
    vec = {0: rng.standard_normal(dim)}
    for c in range(3):
        vec[1 + c] = vec[0] + rng.standard_normal(dim)
        for g in range(3):
            vec[4 + 3 * c + g] = vec[1 + c] + rng.standard_normal(dim)
    sq = _geometry(vec)
    edges = spanning_edges(np.sqrt(sq))
    _, v_free = cue_matrices({"centrality": centrality(sq)}, {"centrality": 1.0})
    parent, _, _ = best_rooting(edges, len(vec), np.zeros_like(v_free), v_free, np.ones(len(vec)), max_hops=1)
    truth = [-1, 0, 0, 0] + [1 + i // 3 for i in range(9)]
    assert parent.tolist() == truth
    chain = {0: rng.standard_normal(dim)}
    for i in range(1, 5):
        chain[i] = chain[i - 1] + rng.standard_normal(dim)
    sq = _geometry(chain)
    assert int(np.argmin(centrality(sq))) == 2
