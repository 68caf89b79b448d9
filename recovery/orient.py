"""Tree-consistent orientation, family geometry and missing-parent checks (beyond the paper).

The paper orients each edge independently: an edge costs an extra lambda when its two direction scores disagree
with it. Here the undirected tree is found first (minimum spanning tree of D, or the paper's MDST with its
directions dropped); then one root is chosen per tree, and every edge points away from it. The root (and, with
`stage="auto"`, the tree's training stage) maximises the agreement of the vote matrix V with *every*
ancestor-descendant pair of the rooted tree, not only the edges: a cue that is noisy on one short edge is
usually clear between a node and its grandchildren. A stage cue alone cannot fix the stage of a path-shaped tree
(reversing every edge and the stage explains it equally well); stage-free cues break that tie, and an exact tie
goes to specialization.

Family geometry. Fine-tuning adds a roughly independent change to its parent's weights, so squared l2
distances add along the tree: sq[p, b] = sq[p, a] + sq[a, b] when p -> a -> b. For two siblings a, b of p that
share part of their change (same recipe, other seed), tau = (sq[p, b] - sq[p, a]) / sq[a, b] is near 0 instead
of 1, and `siblings` re-attaches b to p. Children b, c of x with r = sq[b, c] / (sq[x, b] + sq[x, c]) well below 1
share a change that x lacks: their true parent is missing from the folder (or they are same-recipe siblings);
`missing_parents` reports them instead of leaving the forced edge unexplained.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree


def spanning_edges(distance: np.ndarray) -> list[tuple[int, int]]:
    """Undirected edges (i < j) of a minimum spanning tree of a symmetric distance matrix."""
    d = np.asarray(distance, dtype=np.float64)
    n = len(d)
    if n < 2:
        return []
    # csgraph treats 0 as "no edge": lift every off-diagonal entry by a constant (same tree, all edges present).
    lifted = d - d.min() + 1.0
    np.fill_diagonal(lifted, 0.0)
    mst = minimum_spanning_tree(lifted).tocoo()
    return sorted((min(i, j), max(i, j)) for i, j in zip(mst.row.tolist(), mst.col.tolist()))


def root_at(n: int, edges: list[tuple[int, int]], root: int) -> np.ndarray:
    """Parent array (-1 at `root`) of an undirected tree on n nodes, every edge pointing away from `root`."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        adj[i].append(j)
        adj[j].append(i)
    parent = np.full(n, -2)
    parent[root] = -1
    queue = deque([root])
    while queue:
        x = queue.popleft()
        for y in adj[x]:
            if parent[y] == -2:
                parent[y] = x
                queue.append(y)
    if (parent == -2).any():
        raise ValueError(f"edges do not span all {n} nodes")
    return parent


def ancestor_matrix(parent: np.ndarray, max_hops: int | None = None) -> np.ndarray:
    """A[i, j] = True when i is a proper ancestor of j (at most `max_hops` edges above it, if given)."""
    n = len(parent)
    a = np.zeros((n, n), dtype=bool)
    for j in range(n):
        x, hops = parent[j], 1
        while x >= 0 and (max_hops is None or hops <= max_hops):
            a[x, j] = True
            x, hops = parent[x], hops + 1
    return a


def best_rooting(edges: list[tuple[int, int]], n: int, v_stage: np.ndarray, v_free: np.ndarray,
                 stage_sign: np.ndarray | None = None, max_hops: int | None = None) -> tuple[np.ndarray, int, dict]:
    """Root the tree where the votes agree most with all ancestor -> descendant pairs.

    Args:
        edges: undirected tree edges on nodes 0..n-1.
        v_stage, v_free: (n, n) vote matrices (recovery.cues.cue_matrices), V[i, j] > 0: i is an ancestor of j.
        stage_sign: (n,) +1 for a specialization node, -1 for generalization (the sign of v_stage for pairs whose
            descendant is that node); None chooses one sign for the whole tree ("auto" stage).
        max_hops: count only ancestor pairs at most this many edges apart (1: the edges alone; None: all).

    Returns:
        (parent array, sign used (+1 specialization / -1 generalization / 0 given per node), evidence dict).
    """
    if n == 1:
        return np.array([-1]), 1, {"scores": [0.0]}
    signs = [1, -1] if stage_sign is None else [0]
    # Given stages: a generalization node below a specialization one breaks the stage order (cf. mother.py's
    # stage_order); each such pair costs as much as the strongest possible vote.
    order_cost = 0.0
    if stage_sign is not None:
        strength = float(np.abs(v_free).max() + np.abs(v_stage).max())
        order_cost = ((stage_sign[:, None] > 0) & (stage_sign[None, :] < 0)) * max(strength, 1.0)
    best = (-np.inf, None, None)
    scores = np.zeros((len(signs), n))
    for k, s in enumerate(signs):
        w = v_free + (stage_sign[None, :] if s == 0 else s) * v_stage - order_cost
        scores[k] = _edge_scores(n, edges, w) if max_hops == 1 else [
            float((ancestor_matrix(root_at(n, edges, r), max_hops) * w).sum()) for r in range(n)]
        for r in range(n):
            if scores[k, r] > best[0] + 1e-12:
                best = (scores[k, r], r, s)
    _, r, s = best
    top = np.sort(scores.ravel())[::-1]
    margin = float(top[0] - top[1]) if top.size > 1 else 0.0
    return root_at(n, edges, r), int(s), {"root_score": float(best[0]), "margin": margin,
                                          "auto_stage": None if s == 0 else ("specialization" if s > 0 else "generalization")}


def _edge_scores(n: int, edges: list[tuple[int, int]], w: np.ndarray) -> np.ndarray:
    """sum of w[parent, child] over the edges, for every choice of root, in O(n): moving the root across one edge
    flips only that edge."""
    parent = root_at(n, edges, 0)
    scores = np.empty(n)
    scores[0] = sum(w[p, c] for c, p in enumerate(parent) if p >= 0)
    order = np.argsort(depths(parent), kind="stable")
    for c in order[1:]:
        p = parent[c]
        scores[c] = scores[p] - w[p, c] + w[c, p]
    return scores


def place_siblings(parent: np.ndarray, sq: np.ndarray, tau: float = 0.5) -> tuple[np.ndarray, list[dict]]:
    """Re-attach b to its grandparent p when p -> a -> b breaks additivity like siblings do (tau < `tau`).

    Visits nodes top-down, so a run of near-duplicates p -> a -> b -> c all become children of p.
    Returns the new parent array and one record per move.
    """
    parent = np.array(parent)
    moves = []
    order = np.argsort(depths(parent), kind="stable")
    for b in order:
        a = parent[b]
        if a < 0 or parent[a] < 0 or sq[a, b] <= 0:
            continue
        p = parent[a]
        t = float((sq[p, b] - sq[p, a]) / sq[a, b])
        if t < tau:
            parent[b] = p
            moves.append({"node": int(b), "from": int(a), "to": int(p), "tau": t})
    return parent, moves


def missing_parents(parent: np.ndarray, sq: np.ndarray, ratio: float = 0.75, min_shared: float = 0.0,
                    tau: float | None = None) -> list[dict]:
    """Groups of children that share a change their recovered parent lacks (likely a missing common parent).

    For children b, c of x, r = sq[b, c] / (sq[x, b] + sq[x, c]) is ~1 when x is their parent and ~0.5 when they
    are siblings of x (or share a parent between x and them); the shared change has squared length
    s = (sq[x, b] + sq[x, c] - sq[b, c]) / 2. A pair is linked when r < `ratio` and s >= `min_shared` times the
    median squared length of the recovered edges (a missing model is a whole fine-tuning step away; same-task
    siblings share a smaller change). Linked pairs form the groups, each reported with the estimated length of the
    missing edge, sqrt(median s). With `tau`, orphans chained onto one another (x -> b -> c with c a sibling of
    b, `place_siblings`) are first hung on x for the check; the parent array itself is not changed.
    A root with such children is itself likely a sibling of them (the true root is missing).
    """
    parent = np.asarray(parent)
    if tau is not None:
        parent, _ = place_siblings(parent, sq, tau)
    edge_sq = [sq[p, j] for j, p in enumerate(parent) if p >= 0]
    floor = float(min_shared) * float(np.median(edge_sq)) if edge_sq else 0.0
    out = []
    for x in range(len(parent)):
        kids = np.flatnonzero(parent == x)
        if len(kids) < 2:
            continue
        link = {int(k): {int(k)} for k in kids}
        shared = []
        for i, b in enumerate(kids):
            for c in kids[i + 1:]:
                den = sq[x, b] + sq[x, c]
                s = float(den - sq[b, c]) / 2.0
                if den > 0 and sq[b, c] / den < ratio and s >= floor:
                    group = link[int(b)] | link[int(c)]
                    for m in group:
                        link[m] = group
                    shared.append(max(s, 0.0))
        groups = {frozenset(g) for g in link.values() if len(g) > 1}
        for g in sorted(groups, key=min):
            out.append({"attached_to": int(x), "models": sorted(g), "is_root": bool(parent[x] < 0),
                        "missing_edge_l2": float(np.sqrt(np.median(shared)))})
    return out


def depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node of a parent array (-1 marks a root), each path walked once."""
    depth = np.full(len(parent), -1)
    for j in range(len(parent)):
        trail, x = [], j
        while x >= 0 and depth[x] < 0:
            trail.append(x)
            x = parent[x]
        base = -1 if x < 0 else depth[x]
        for k, node in enumerate(reversed(trail)):
            depth[node] = base + 1 + k
    return depth
