"""Split models into Model Trees: scipy hierarchical clustering of the l2 distances (paper section 5.2).

With a known number of trees the dendrogram is cut into that many clusters (the paper's setting). With
`n_trees="auto"` the cut goes into the largest relative gap between consecutive merge heights: inside a tree,
models sit a few fine-tuning steps apart; unrelated trees differ by whole pre-trainings. If no gap reaches
`min_gap_ratio`, everything is one tree. Scale-free evidence cannot tell "one tree" from "all unrelated"; a
`threshold` on the merge height settles that case when the user knows the scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from common.errors import ConfigError

LINKAGES = ("single", "complete", "average", "weighted", "centroid", "median", "ward")


@dataclass
class Clustering:
    """Cluster label per model (0..n_clusters-1, numbered by first appearance) and how the cut was chosen."""
    labels: np.ndarray
    n_clusters: int
    evidence: dict = field(default_factory=dict)


def cluster_trees(distance: np.ndarray, n_trees: int | str = "auto", linkage: str = "single", *,
                  min_gap_ratio: float = 3.0, threshold: float | None = None) -> Clustering:
    """Cluster models into trees from a symmetric distance matrix.

    Args:
        distance: (n, n) symmetric, zero-diagonal distances (the paper uses l2).
        n_trees: the number of trees when known, or "auto".
        linkage: scipy linkage method (the paper: scipy's default, "single").
        min_gap_ratio: "auto" cuts only where the gap ratio (see `_largest_gap`) is at least this.
        threshold: if set (and n_trees is "auto"), cut the dendrogram at this merge height instead.

    Returns:
        Clustering with labels and evidence: merge heights, the chosen cut, its ratio and the rule applied.
    """
    d = _check_distance(distance)
    n = d.shape[0]
    if linkage not in LINKAGES:
        raise ConfigError(f"unknown linkage {linkage!r}; choose one of {LINKAGES}")
    if n == 1:
        return Clustering(np.zeros(1, dtype=int), 1, {"rule": "one model", "heights": []})
    z = hierarchy.linkage(squareform(d, checks=False), method=linkage)
    return cluster_linkage(z, n_trees, linkage, min_gap_ratio=min_gap_ratio, threshold=threshold)


def cluster_linkage(z: np.ndarray, n_trees: int | str = "auto", linkage: str = "single", *,
                    min_gap_ratio: float = 3.0, threshold: float | None = None) -> Clustering:
    """Cut a scipy linkage matrix `z` of n models into trees, with the rules of `cluster_trees`.

    `cluster_trees` builds `z` from a dense distance matrix; recovery.sparse builds the same single-linkage `z`
    from a sparse candidate graph.
    """
    n = z.shape[0] + 1
    heights = z[:, 2]
    evidence: dict = {"linkage": linkage, "heights": [float(h) for h in heights]}
    if n_trees != "auto":
        k = _known_k(n_trees, n)
        labels = hierarchy.fcluster(z, t=k, criterion="maxclust")
        evidence["rule"] = f"n_trees={k} given"
        if len(np.unique(labels)) != k:
            evidence["warning"] = (f"asked for {k} trees but tied merge heights allow only "
                                   f"{len(np.unique(labels))}")
    elif threshold is not None:
        labels = hierarchy.fcluster(z, t=float(threshold), criterion="distance")
        evidence.update(rule=f"cut at merge height threshold={threshold}", cut_height=float(threshold))
    else:
        cut, info = _largest_gap(np.sort(heights), min_gap_ratio)
        evidence.update(info)
        labels = (np.ones(n, dtype=int) if cut is None
                  else hierarchy.fcluster(z, t=cut, criterion="distance"))
    labels = _first_appearance(labels)
    evidence["sizes"] = np.bincount(labels).tolist()
    return Clustering(labels, int(labels.max()) + 1, evidence)


def _check_distance(distance: np.ndarray) -> np.ndarray:
    d = np.asarray(distance, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distance must be a non-empty square matrix, got shape {d.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("distance matrix must be finite and non-negative")
    if not np.allclose(d, d.T, rtol=1e-9, atol=0):
        raise ValueError("distance matrix is not symmetric")
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def _known_k(n_trees: int | str, n: int) -> int:
    try:
        k = int(n_trees)
    except (TypeError, ValueError):
        raise ConfigError(f"recovery.cluster.n_trees must be a positive integer or 'auto', got {n_trees!r}") from None
    if not 1 <= k <= n:
        raise ConfigError(f"recovery.cluster.n_trees={k} is impossible with {n} models (at most one tree per model)")
    return k


def _largest_gap(heights: np.ndarray, min_ratio: float, many_max_spread: float = 2.0) -> tuple[float | None, dict]:
    """Cut height in the most convincing gap of sorted merge heights (None: no convincing gap, one tree).

    A cut after merge k is scored by its gap ratio h[k+1] / h[k] divided by the spread of the merges above it,
    h[-1] / h[k+1]: between unrelated trees the merges above the cut are alike. A cut that would make more trees
    than half the models rests on little within-tree evidence (a near-duplicate pair inside one tree looks like
    that), so it is taken only when the merges above it agree within `many_max_spread`. Merges at height 0
    (identical models) never start a gap. Equal scores go to the higher cut (fewer trees).
    """
    info: dict = {"rule": "auto: largest relative gap in merge heights, over the spread of the merges above it",
                  "min_gap_ratio": float(min_ratio)}
    n = len(heights) + 1
    lower, upper = heights[:-1], heights[1:]
    valid = lower > 0
    if not valid.any():
        info.update(gap_ratio=None, cut_height=None,
                    decision="one tree: fewer than 3 models or no positive merge height to compare")
        return None, info
    spread = heights[-1] / np.where(valid, upper, 1.0)
    score = np.where(valid, upper / np.where(valid, lower, 1.0) / spread, 0.0)
    n_trees = n - 1 - np.arange(len(score))  # trees left by cutting after merge k (0-based)
    score[(n_trees > n / 2) & (spread > many_max_spread)] = 0.0
    best = len(score) - 1 - int(np.argmax(score[::-1]))  # last maximum: the highest cut among equal scores
    info.update(gap_ratio=float(score[best]), gap_lower=float(lower[best]), gap_upper=float(upper[best]),
                spread_above=float(spread[best]))
    if score[best] < min_ratio:
        info.update(cut_height=None, decision=f"one tree: best gap ratio {score[best]:.3g} < {min_ratio}")
        return None, info
    cut = float(np.sqrt(lower[best] * upper[best]))
    info.update(cut_height=cut, decision=f"cut between merge heights {lower[best]:.4g} and {upper[best]:.4g} "
                                         f"(gap ratio {score[best]:.3g})")
    return cut, info


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance, so output does not depend on scipy's numbering."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(int)
