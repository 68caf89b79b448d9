"""Sparse recovery (recovery/sparse.py): equal to the dense method where both run, block split == one process."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from common.errors import ConfigError
from recovery import mdst, sparse
from recovery.cluster import cluster_trees
from recovery.distances import pairwise_sq_dists
from recovery.mdst import min_arborescence
from recovery.mother import recover_forest
from recovery.synthetic_large import edge_accuracy, large_forest, write_folder


def _kurtosis(x: np.ndarray) -> np.ndarray:
    c = x.astype(np.float64) - x.mean(axis=1, keepdims=True)
    return (c ** 4).mean(axis=1) / (c ** 2).mean(axis=1) ** 2


@pytest.fixture(scope="module")
def forest():
    return large_forest(700, tree_sizes=(20, 200), shape=(16, 16), seed=3)


def _random_digraph(rng, n: int, p: float):
    m = np.where(rng.random((n, n)) < p, rng.random((n, n)), np.inf)
    np.fill_diagonal(m, np.inf)
    ring = rng.permutation(n)                       # a Hamiltonian cycle: every root can reach every node
    m[ring, np.roll(ring, -1)] = rng.random(n)
    return m


@pytest.mark.parametrize("seed", range(8))
def test_sparse_arborescence_equals_dense(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    m = _random_digraph(rng, n, float(rng.choice([0.05, 0.2, 0.8])))
    src, dst = np.nonzero(np.isfinite(m))
    for root in (None, int(rng.integers(n))):
        dense = min_arborescence(m, root=root)
        got = mdst.min_arborescence_sparse(n, src, dst, m[src, dst], root=root)
        assert got.tolist() == dense.tolist()


def test_sparse_arborescence_reports_unreachable_parts():
    with pytest.raises(ValueError, match="no spanning arborescence"):
        mdst.min_arborescence_sparse(4, np.array([0, 2]), np.array([1, 3]), np.array([1.0, 1.0]))


def test_single_linkage_on_all_pairs_equals_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    i, j = np.triu_indices(40, 1)
    z = sparse.single_linkage(40, i, j, d[i, j])
    ref = hierarchy.linkage(squareform(d, checks=False), method="single")
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)
    for k in (2, 5, 11):
        a = hierarchy.fcluster(z, k, "maxclust")
        b = hierarchy.fcluster(ref, k, "maxclust")
        assert len({(p, q) for p, q in zip(a, b)}) == k    # the same partition, whatever the numbering


@pytest.mark.parametrize("knn", [4, 48])
def test_sparse_recovery_equals_dense(forest, knn):
    """Equal clusters, lambdas and parents; with 4 neighbours the duals' certificate has to add the missing pairs."""
    k = _kurtosis(forest.x)
    n = len(k)
    res = sparse.recover_matrix(forest.x, k, sparse={"knn": knn, "pool": 8, "project_dim": 32, "strip": 128})
    cert = res.clustering.evidence["candidates"]["certificate"]
    assert cert["uncertified_clusters"] == [] and (cert["added_pairs"] > 0 or knn > 4)
    d = np.sqrt(pairwise_sq_dists(forest.x))
    cl = cluster_trees(d)
    parent, lams = recover_forest(d, k, np.zeros(n, dtype=bool), cl.labels)
    assert cl.n_clusters == forest.tree.max() + 1 == res.clustering.n_clusters
    assert res.clustering.labels.tolist() == cl.labels.tolist()
    assert res.parent.tolist() == parent.tolist()
    assert sorted(res.lambdas) == sorted(lams)
    for label, lam in lams.items():
        assert res.lambdas[label] == pytest.approx(lam, rel=1e-10)
    within = n - res.n_groups                      # merges inside neighbour groups are exact
    np.testing.assert_allclose(np.sort(res.clustering.evidence["heights"])[:within],
                               np.sort(cl.evidence["heights"])[:within], rtol=1e-9)
    assert 0.5 < edge_accuracy(forest.parent, parent) < 1.0   # a benchmark with something left to get wrong


def test_given_number_of_trees_and_stages_match_dense(forest):
    """Fewer trees than neighbour groups: the merges between groups decide, exact here (no projection, every
    member in the link search); with the defaults they are approximate (recovery.sparse, step 3)."""
    k = _kurtosis(forest.x)
    gen = np.zeros(len(k), dtype=bool)
    gen[forest.depth == 0] = True                   # roots pre-trained: generalization stage
    res = sparse.recover_matrix(forest.x, k, gen, sparse={"knn": 16, "pool": 8, "project_dim": None,
                                                          "link_sample": 1000}, cluster={"n_trees": 3}, c=0.5)
    assert res.n_groups == 5
    d = np.sqrt(pairwise_sq_dists(forest.x))
    cl = cluster_trees(d, n_trees=3)
    parent, _ = recover_forest(d, k, gen, cl.labels, c=0.5)
    assert res.clustering.labels.tolist() == cl.labels.tolist()
    assert res.parent.tolist() == parent.tolist()


def test_block_split_and_merge_equals_one_block(forest):
    z = sparse.project(forest.x, 32, seed=1)
    whole = sparse.knn_block(z, 0, len(z), 8, strip=128)
    bounds = sparse.block_bounds(len(z), 4, strip=128)
    assert len(bounds) == 4 and bounds[0][0] == 0 and bounds[-1][1] == len(z)
    blocks = [(a, *sparse.knn_block(z, a, b, 8, strip=128)) for a, b in reversed(bounds)]
    ids, d2 = sparse.merge_blocks(blocks, len(z))
    assert np.array_equal(ids, whole[0]) and np.array_equal(d2, whole[1])
    with pytest.raises(ValueError, match="do not tile"):
        sparse.merge_blocks([b for t, b in enumerate(blocks) if t != 2], len(z))


def test_folder_blocks_and_recover_knn_equal_dense(forest, tmp_path):
    from recovery.sparse_run import load_blocks, neighbour_blocks, read_folder
    from recovery.stage import recover

    folder = write_folder(forest, tmp_path / "forest")
    opts = {"knn": 48, "pool": 8, "project_dim": 32, "strip": 128}
    fm = read_folder(folder)
    files = neighbour_blocks(folder, len(fm.ids), opts, 4, tmp_path / "blocks")
    assert len(files) == 4
    merged = sparse.merge_blocks(load_blocks(files), len(fm.ids))
    one = sparse.neighbours(fm.x, sparse.sparse_options(opts))
    assert np.array_equal(merged[0], one[0])
    common = dict(ground_truth=folder / "graph.json", plot=False, quiet=True, distance={"metric": "l2"})
    knn = recover(folder, candidates="knn", sparse=opts, **common)
    dense = recover(folder, candidates="dense", **common)
    assert knn["tree"]["options"]["candidates"] == "knn" and dense["tree"]["options"]["candidates"] == "dense"
    parents = [{e["child"]: e["parent"] for e in r["tree"]["edges"]} for r in (knn, dense)]
    assert parents[0] == parents[1]
    assert knn["metrics"]["edge_accuracy"] == dense["metrics"]["edge_accuracy"]
    auto = recover(folder, candidates="auto", sparse={**opts, "auto_above": 100}, **common)
    assert auto["tree"]["options"]["candidates"] == "knn"


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        sparse.sparse_options({"k": 3})
    with pytest.raises(ConfigError, match="recovery.sparse.knn must be an integer >= 1"):
        sparse.sparse_options({"knn": 0})
    with pytest.raises(ConfigError, match="one of"):
        sparse.use_knn("nearest", 10, 5)
    assert sparse.use_knn("auto", 10, 5) and not sparse.use_knn("auto", 5, 5) and not sparse.use_knn("dense", 10**6, 5)
