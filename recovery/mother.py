"""MoTHer tree recovery inside one cluster (paper Eq. 4-6): M = D + lambda * (K xor T), then an MDST.

Conventions: an edge i -> j has i as the parent. K_ij = 1 when k(v_i) < k(v_j), i.e. the parent would have the
lower direction score; in specialization (fine-tuning) the score falls from parent to child, so such an edge is
penalised. T_ij = 1 when the child j is a generalization node (its training raised the score), which flips the
penalty. lambda = c * (1/n^2) sum_ij D_ij with the diagonal counted as 0 (the paper's formula; c = 0.3).

Stage order (our addition, `stage_order=True`): an edge from a specialization parent to a generalization child
costs another lambda. Without it a generalization root (a foundation model) and its specialization child are
interchangeable: root -> child lowers the score as specialization should, child -> root raises it as
generalization should, and both cost the same. Graphs whose nodes all share one stage (the paper's) are unchanged.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from common.errors import ConfigError
from common.schema import merge_options
from recovery.config import PAPER_CUES, TreeOptions
from recovery.mdst import min_arborescence
from recovery.ties import TieBreak, less_with_ties


def cost_matrix(distance: np.ndarray, direction: np.ndarray, generalization: np.ndarray,
                c: float = 0.3, stage_order: bool = True, ties: TieBreak | None = None) -> tuple[np.ndarray, float]:
    """The paper's merged prior matrix M (edge i -> j costs M[i, j]) and the lambda used.

    Args:
        distance: (n, n) symmetric distances D.
        direction: (n,) direction scores k (kurtosis by default).
        generalization: (n,) bool, True where a node was trained in the generalization stage.
        c: weight of the direction prior relative to the mean distance.
        stage_order: add lambda to edges from a specialization parent to a generalization child.
        ties: models equal on every direction layer and their second key (recovery.ties): K within a group.
    """
    d = np.asarray(distance, dtype=np.float64)
    k = np.asarray(direction, dtype=np.float64)
    t = np.asarray(generalization, dtype=bool)
    n = d.shape[0]
    if d.shape != (n, n) or k.shape != (n,) or t.shape != (n,):
        raise ValueError(f"shapes disagree: distance {d.shape}, direction {k.shape}, stages {t.shape}")
    if not (np.isfinite(d).all() and np.isfinite(k).all()):
        raise ValueError("distances and direction scores must be finite")
    lam = float(c) * d.sum() / n**2
    kxor = less_with_ties(k, ties) ^ t[None, :]
    m = d + lam * kxor
    if stage_order:
        m += lam * (~t[:, None] & t[None, :])
    np.fill_diagonal(m, np.inf)
    return m, lam


def recover_tree(distance: np.ndarray, direction: np.ndarray, generalization: np.ndarray,
                 c: float = 0.3, stage_order: bool = True, ties: TieBreak | None = None) -> tuple[np.ndarray, float]:
    """Parent array (-1 for the root) of the MDST of M for one cluster, and the lambda used."""
    if len(direction) == 1:
        return np.array([-1]), 0.0
    m, lam = cost_matrix(distance, direction, generalization, c, stage_order, ties)
    return min_arborescence(m), lam


def recover_forest(distance: np.ndarray, direction: np.ndarray, generalization: np.ndarray,
                   labels: np.ndarray, c: float = 0.3, stage_order: bool = True, ties: TieBreak | None = None
                   ) -> tuple[np.ndarray, dict[int, float]]:
    """Recover one tree per cluster label; return the global parent array (-1 per root) and lambda per cluster."""
    d = np.asarray(distance, dtype=np.float64)
    labels = np.asarray(labels)
    parent = np.full(len(labels), -1)
    lams: dict[int, float] = {}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        local, lams[int(label)] = recover_tree(d[np.ix_(idx, idx)], np.asarray(direction)[idx],
                                               np.asarray(generalization)[idx], c, stage_order,
                                               None if ties is None else ties.subset(idx))
        has = local >= 0
        parent[idx[has]] = idx[local[has]]
    return parent, lams


def tree_options(given: Mapping | None) -> dict:
    """The tree options (recovery.config.TreeOptions) with defaults filled in, the paper's (orient=edges) unless
    given, and `cues: null` read as PAPER_CUES; unknown keys and bad values are ConfigErrors."""
    t = merge_options(TreeOptions, given, "recovery.tree")
    t["cues"] = {str(k): float(v) for k, v in (PAPER_CUES if t["cues"] is None else t["cues"]).items()}
    return t


def recover_forest_rooted(distance: np.ndarray, sq: np.ndarray, per_layer: dict[str, np.ndarray],
                          generalization: np.ndarray, labels: np.ndarray, direction: np.ndarray,
                          opts: dict, ties: TieBreak | None = None) -> tuple[np.ndarray, dict[int, dict]]:
    """Recover each cluster's tree with a tree-consistent orientation (recovery.orient); opts: tree_options().

    `ties` (recovery.ties): within a group of models equal on every direction layer, the per-layer cue votes come
    from its values on the other layers.

    Returns the global parent array and, per cluster label, the evidence (root score, stage chosen, moves made).
    """
    from recovery.cues import centrality, cue_matrices
    from recovery.orient import best_rooting, place_siblings, spanning_edges

    missing = sorted(set(k for k, w in opts["cues"].items() if w) - set(per_layer) - {"centrality"})
    if missing:
        raise ConfigError(f"recovery.tree.cues {missing} need recovery.direction.cues=true (per-layer cue values); "
                         f"available: {sorted(per_layer)}")
    d = np.asarray(distance, dtype=np.float64)
    gen = np.asarray(generalization, dtype=bool)
    parent = np.full(len(labels), -1)
    evidence: dict[int, dict] = {}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        sub = np.ix_(idx, idx)
        if opts["structure"] == "mdst":
            local, _ = recover_tree(d[sub], np.asarray(direction)[idx], gen[idx], opts["c"], opts["stage_order"],
                                    None if ties is None else ties.subset(idx))
            edges = [(int(min(j, p)), int(max(j, p))) for j, p in enumerate(local) if p >= 0]
        else:
            edges = spanning_edges(d[sub])
        values = {k: v[idx] for k, v in per_layer.items()}
        if opts["cues"].get("centrality"):
            values["centrality"] = centrality(np.asarray(sq)[sub])   # within this tree only
        v_stage, v_free = cue_matrices(values, opts["cues"], opts["cue_reduce"])
        if ties is not None:
            v_stage, v_free = _tie_votes(v_stage, v_free, ties.subset(idx), values, opts)
        sign = None if opts["stage"] == "auto" else np.where(gen[idx], -1.0, 1.0)
        local, _, ev = best_rooting(edges, len(idx), v_stage, v_free, sign, opts["max_hops"])
        if opts["siblings"]:
            local, moves = place_siblings(local, np.asarray(sq)[sub], opts["sibling_tau"])
            ev["sibling_moves"] = [{**m, **{k: int(idx[m[k]]) for k in ("node", "from", "to")}} for m in moves]
        has = local >= 0
        parent[idx[has]] = idx[local[has]]
        evidence[int(label)] = ev
    return parent, evidence


def _tie_votes(v_stage: np.ndarray, v_free: np.ndarray, ties: TieBreak, values: dict, opts: dict
               ) -> tuple[np.ndarray, np.ndarray]:
    """The vote matrices with the per-layer cues of every pair within a tie group taken from the tie-break layers
    (centrality, one value per model, keeps its votes)."""
    from recovery.cues import cue_matrices

    same = ties.same()
    if not same.any():
        return v_stage, v_free
    layer_cues = {k: w for k, w in opts["cues"].items() if k != "centrality"}
    with np.errstate(invalid="ignore"):
        t_stage, t_free = cue_matrices(ties.per_layer, layer_cues, opts["cue_reduce"])
    if opts["cues"].get("centrality"):
        t_free = t_free + cue_matrices(values, {"centrality": opts["cues"]["centrality"]}, opts["cue_reduce"])[1]
    return np.where(same, t_stage, v_stage), np.where(same, t_free, v_free)
