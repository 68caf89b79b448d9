"""Minimum arborescence vs networkx and brute force on random synthetic cost matrices (property tests)."""
from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recovery.mdst import arborescence_cost, is_arborescence, min_arborescence


def networkx_cost(cost: np.ndarray, root: int | None = None) -> float:
    """networkx's minimum spanning arborescence total (free root unless `root` is given)."""
    n = len(cost)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from((i, j, float(cost[i, j])) for i in range(n) for j in range(n)
                              if i != j and j != root and np.isfinite(cost[i, j]))
    tree = nx.minimum_spanning_arborescence(g)
    return sum(w for _, _, w in tree.edges(data="weight"))


def brute_force_cost(cost: np.ndarray) -> float:
    """Cheapest arborescence over every parent assignment (n <= 4)."""
    n, best = len(cost), np.inf
    for parent in itertools.product(range(-1, n), repeat=n):
        p = np.array(parent)
        if (p == np.arange(n)).any() or not is_arborescence(p):
            continue
        best = min(best, arborescence_cost(cost, p))
    return best


def matrices(max_n: int = 9, integers: bool = False):
    """Random dense cost matrices; small integer ranges give many ties."""
    elem = st.integers(0, 4).map(float) if integers else st.floats(-10, 10, allow_nan=False, width=32)
    return st.integers(2, max_n).flatmap(lambda n: st.lists(elem, min_size=n * n, max_size=n * n).map(
        lambda v: np.array(v, dtype=np.float64).reshape(n, n)))


@settings(max_examples=150, deadline=None)
@given(cost=matrices())
def test_free_root_matches_networkx(cost):
    parent = min_arborescence(cost)
    assert is_arborescence(parent)
    assert arborescence_cost(cost, parent) == pytest.approx(networkx_cost(cost), abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(cost=matrices(integers=True))
def test_ties_free_root_matches_networkx(cost):
    """Many equal costs: edges may differ from networkx, the total may not."""
    parent = min_arborescence(cost)
    assert is_arborescence(parent)
    assert arborescence_cost(cost, parent) == pytest.approx(networkx_cost(cost))


@settings(max_examples=100, deadline=None)
@given(cost=matrices(), data=st.data())
def test_fixed_root_matches_networkx(cost, data):
    root = data.draw(st.integers(0, len(cost) - 1))
    parent = min_arborescence(cost, root=root)
    assert is_arborescence(parent) and parent[root] == -1
    assert arborescence_cost(cost, parent) == pytest.approx(networkx_cost(cost, root), abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(cost=matrices(max_n=4, integers=True))
def test_free_root_matches_brute_force(cost):
    assert arborescence_cost(cost, min_arborescence(cost)) == pytest.approx(brute_force_cost(cost))


def test_larger_random_graphs_match_networkx():
    """Sizes where long contraction chains happen (synthetic uniform costs)."""
    rng = np.random.default_rng(0)
    for n in (25, 40):
        cost = rng.random((n, n))
        assert arborescence_cost(cost, min_arborescence(cost)) == pytest.approx(networkx_cost(cost))


def test_known_chain_is_recovered():
    """Synthetic chain 0 -> 1 -> 2 -> 3: forward edges cheap, everything else expensive."""
    cost = np.full((4, 4), 10.0)
    for i in range(3):
        cost[i, i + 1] = 1.0
    assert min_arborescence(cost).tolist() == [-1, 0, 1, 2]
    assert min_arborescence(cost, root=2).tolist()[2] == -1


def test_missing_edges_and_unreachable_nodes():
    """+inf marks a missing edge; a node nothing can reach is an error, not a wrong tree."""
    inf = np.inf
    cost = np.array([[0, 1, inf], [inf, 0, 1], [inf, inf, 0]], dtype=float)
    assert min_arborescence(cost).tolist() == [-1, 0, 1]
    with pytest.raises(ValueError, match="cannot be reached"):
        min_arborescence(cost, root=1)
    split = np.array([[0, 1, inf, inf], [1, 0, inf, inf], [inf, inf, 0, 1], [inf, inf, 1, 0]], dtype=float)
    with pytest.raises(ValueError, match="separate parts"):
        min_arborescence(split)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="square"):
        min_arborescence(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        min_arborescence(np.array([[0, np.nan], [1, 0]]))
    with pytest.raises(ValueError, match="root"):
        min_arborescence(np.zeros((2, 2)), root=5)
    assert min_arborescence(np.zeros((1, 1))).tolist() == [-1]
