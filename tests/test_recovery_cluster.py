"""Tree clustering on synthetic distance matrices with known families (not evidence about real models)."""
from __future__ import annotations

import numpy as np
import pytest

from recovery.cluster import cluster_trees


def family_distances(sizes: list[int], within: float = 1.0, between: float = 50.0, seed: int = 0,
                     dim: int = 16) -> np.ndarray:
    """Synthetic points: families of `sizes` members spread `within` around centres `between` apart."""
    rng = np.random.default_rng(seed)
    points = []
    for k, size in enumerate(sizes):
        centre = np.zeros(max(dim, len(sizes)))
        centre[k] = between
        points += [centre + within * rng.standard_normal(len(centre)) / np.sqrt(dim) for _ in range(size)]
    x = np.array(points)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def expected_labels(sizes: list[int]) -> list[int]:
    return [k for k, size in enumerate(sizes) for _ in range(size)]


@pytest.mark.parametrize("sizes", [[7, 7], [5, 3, 4], [21, 21, 21, 21, 21]])
def test_auto_finds_well_separated_families(sizes):
    result = cluster_trees(family_distances(sizes))
    assert result.n_clusters == len(sizes)
    assert result.labels.tolist() == expected_labels(sizes)
    ev = result.evidence
    assert ev["gap_ratio"] >= 3.0 and ev["gap_lower"] < ev["cut_height"] < ev["gap_upper"]
    assert len(ev["heights"]) == sum(sizes) - 1 and ev["sizes"] == sizes


def test_known_k_matches_auto_and_paper_default():
    d = family_distances([6, 4])
    assert cluster_trees(d, n_trees=2).labels.tolist() == expected_labels([6, 4])
    assert cluster_trees(d, n_trees=1).n_clusters == 1
    assert cluster_trees(d, n_trees=2, linkage="average").labels.tolist() == expected_labels([6, 4])


def test_one_family_stays_one_tree():
    """No gap of at least min_gap_ratio: one tree, with the reason recorded."""
    result = cluster_trees(family_distances([9]))
    assert result.n_clusters == 1
    assert result.evidence["cut_height"] is None and "one tree" in result.evidence["decision"]


def test_near_duplicate_does_not_split_a_tree():
    """A near-copy (e.g. a re-saved model) gives a huge first gap ratio but a wide spread above it."""
    d = family_distances([8], dim=2)
    d = np.pad(d, ((0, 1), (0, 1)))
    d[-1, :-1] = d[:-1, -1] = d[0, :-1] + 1e-4
    d[-1, 0] = d[0, -1] = 1e-4
    result = cluster_trees(d)
    assert result.n_clusters == 1, result.evidence
    assert cluster_trees(np.pad(d, ((0, 1), (0, 1)), constant_values=60.0) * (1 - np.eye(10))).labels.tolist() == [0] * 9 + [1]


def test_few_related_among_unrelated():
    """Five models: one related pair and three unrelated singletons, all far apart alike."""
    d = np.full((5, 5), 50.0) - 50.0 * np.eye(5)
    d[0, 1] = d[1, 0] = 1.0
    assert cluster_trees(d).labels.tolist() == [0, 0, 1, 2, 3]


def test_singleton_beside_families_is_its_own_tree():
    d = family_distances([6, 5, 1])
    result = cluster_trees(d)
    assert result.n_clusters == 3 and result.labels.tolist() == expected_labels([6, 5, 1])


def test_all_unrelated_needs_threshold_or_k():
    """Scale-free evidence cannot tell 'all unrelated' from 'one tree'; a threshold or n_trees settles it."""
    d = family_distances([1, 1, 1, 1])
    assert cluster_trees(d).n_clusters == 1
    assert cluster_trees(d, threshold=10.0).n_clusters == 4
    assert cluster_trees(d, n_trees=4).n_clusters == 4


def test_ties_and_identical_models():
    """Equal merge heights (a regular simplex) and zero distances (duplicates) never split a tree."""
    simplex = np.ones((5, 5)) - np.eye(5)
    assert cluster_trees(simplex).n_clusters == 1
    dup = np.zeros((3, 3))
    assert cluster_trees(dup).n_clusters == 1
    # two tied pairs far apart: the tie is kept together on either side of the cut
    d = np.array([[0, 1, 40, 40], [1, 0, 40, 40], [40, 40, 0, 1], [40, 40, 1, 0]], dtype=float)
    result = cluster_trees(d)
    assert result.labels.tolist() == [0, 0, 1, 1] and result.evidence["gap_ratio"] == pytest.approx(40.0)
    # asking for 3 clusters of a perfectly tied simplex is impossible; recorded, not hidden
    assert "warning" in cluster_trees(simplex, n_trees=3).evidence


def test_small_inputs():
    assert cluster_trees(np.zeros((1, 1))).labels.tolist() == [0]
    assert cluster_trees(np.array([[0, 5.0], [5.0, 0]])).n_clusters == 1
    assert cluster_trees(np.array([[0, 5.0], [5.0, 0]]), n_trees=2).n_clusters == 2


def test_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        cluster_trees(np.array([[0, 1.0], [2.0, 0]]))
    with pytest.raises(ValueError, match="finite"):
        cluster_trees(np.array([[0, np.nan], [np.nan, 0]]))
    with pytest.raises(ValueError, match="impossible"):
        cluster_trees(np.zeros((3, 3)), n_trees=4)
    with pytest.raises(ValueError, match="positive integer"):
        cluster_trees(np.zeros((3, 3)), n_trees="many")
    with pytest.raises(ValueError, match="linkage"):
        cluster_trees(np.zeros((3, 3)), linkage="nearest")
