"""Recovery past the dense n x n matrix: candidate edges from nearest neighbours (issue 15, goal 4).

The dense method (recovery.cluster + recovery.mother) needs every pairwise distance. Here only candidate pairs
get an exact distance:

1. Neighbours: each model's `pool` nearest models in a seeded Gaussian random projection (`project_dim` columns)
   of its centred weights, exact in that projection (blocked matrix products and top-k, `strip` rows at a time).
   Row blocks are independent: `knn_block` is what a SLURM array task runs (recovery.sparse_slurm); the blocks
   concatenate into the same answer as one process (strips start at multiples of `strip` either way).
2. Groups: connected components of the neighbour graph. Inside each one, exact distances of every pair, in
   blocks (float64, the dense metric: the mean over distance layers of each layer's l2): each model keeps its
   `knn` exact nearest as candidate edges (plus its neighbour-graph edges, and the group's exact minimum spanning
   tree when the group fits in one block), and the sums give lambda exactly.
3. Links: between groups, the closest pair in the projection among up to `link_sample` seeded random members of
   each group (all members of smaller groups), at its exact distance. The
   single linkage is the minimum spanning tree of candidates + links: within groups its merge heights equal the
   dense ones whenever the candidates hold the dense minimum spanning tree; between groups they are the exact
   distance of that pair (an upper bound of the true one: approximate, reported as such).
   The cut uses recovery.cluster's rules (`cluster_linkage`).
4. Trees: per cluster, the paper's cost M = D + lambda (K xor T) (+ the stage-order term) on the candidate edges
   only, with lambda = c * mean of D over all pairs of the cluster (exact, from step 2 plus exact cross-group
   blocks when a cluster joins groups), and a minimum spanning arborescence on that sparse graph
   (recovery.mdst's `min_arborescence_sparse`: Edmonds with heaps merged small into large; `min_arborescence` on
   a +inf-masked matrix for clusters up to `dense_max` models).
5. Certificate: Edmonds' dual solution bounds, per model v, what a missing edge into v would have to cost to
   improve the tree; a model's k-th exact neighbour distance bounds every missing edge from below. Where that
   bound does not clear the duals, v's exact distances to its cluster are computed, the pairs that could matter are
   added, and the cluster is solved again. So each cluster's tree is optimal over all its pairs: equal to the
   dense method's given equal clusters (up to exact ties), whatever `knn` is (a small knn costs more rounds).

scripts/bench_sparse.py measures both at 2,000 and 10,000 models.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from common.errors import ConfigError
from common.schema import merge_options
from recovery.cluster import Clustering, cluster_linkage
from recovery.config import ClusterOptions, SparseOptions
from recovery.mdst import chain_sums, min_arborescence, min_arborescence_sparse

log = logging.getLogger("mother.recovery.sparse")

CANDIDATES = ("dense", "knn", "auto")


def sparse_options(given: Mapping | None) -> dict:
    """The sparse options (recovery.config.SparseOptions) with defaults; unknown keys and bad values are one-line
    errors."""
    return merge_options(SparseOptions, given, "recovery.sparse")   # the ranges: SparseOptions' field checks


def use_knn(candidates: str, n: int, auto_above: int) -> bool:
    """Whether `candidates` (dense | knn | auto) means the sparse path for n models."""
    if candidates not in CANDIDATES:
        raise ConfigError(f"recovery.candidates must be one of {CANDIDATES}, got {candidates!r}")
    return candidates == "knn" or (candidates == "auto" and n > auto_above)


# ----------------------------------------------------------------------------------------------- neighbours
def project(x: np.ndarray, dim: int | None, seed: int = 0) -> np.ndarray:
    """Rows of `x` centred on their mean, times a seeded Gaussian (p, dim) / sqrt(dim) (None: no projection)."""
    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if dim is None or dim >= x.shape[1]:
        return np.ascontiguousarray(x - mu)
    r = np.random.default_rng(seed).standard_normal((x.shape[1], dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    out = np.empty((x.shape[0], dim), dtype=np.float32)
    for s in range(0, x.shape[0], 8192):
        out[s:s + 8192] = (x[s:s + 8192] - mu) @ r
    return out


def knn_block(z: np.ndarray, start: int, stop: int, k: int, strip: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of z (squared distance) for rows start..stop-1, exact on z.

    Strips of `strip` rows start at multiples of `strip`, so any split of the rows at such multiples gives the
    same numbers. Returns (neighbour ids (m, k) int64, squared distances (m, k) float32), nearest first.
    """
    import torch

    n = z.shape[0]
    k = min(k, n - 1)
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    sq = (zt * zt).sum(1)
    ids = np.empty((stop - start, k), dtype=np.int64)
    d2 = np.empty((stop - start, k), dtype=np.float32)
    s = start
    while s < stop:
        e = min((s // strip + 1) * strip, stop)
        block = torch.addmm(sq[None, :], zt[s:e], zt.T, alpha=-2.0)   # + |z_i|^2 (constant per row) added below
        block[torch.arange(e - s), torch.arange(s, e)] = float("inf")
        v, i = torch.topk(block, k, dim=1, largest=False, sorted=True)
        ids[s - start:e - start] = i.numpy()
        d2[s - start:e - start] = (v + sq[s:e, None]).clamp_min(0).numpy()
        s = e
    return ids, d2


def block_bounds(n: int, n_blocks: int, strip: int = 512) -> list[tuple[int, int]]:
    """Split rows 0..n-1 into up to `n_blocks` contiguous blocks whose starts are multiples of `strip`."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    parts = np.array_split(np.arange(-(-n // strip)), min(n_blocks, -(-n // strip)))
    return [(int(p[0]) * strip, min((int(p[-1]) + 1) * strip, n)) for p in parts]


def merge_blocks(blocks: list[tuple[int, np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (start, ids, d2) row blocks into the (n, k) arrays; every row must be covered exactly once."""
    blocks = sorted(blocks, key=lambda b: b[0])
    pos = 0
    for start, ids, _ in blocks:
        if start != pos:
            raise ValueError(f"neighbour blocks do not tile the rows: expected a block at row {pos}, got {start}")
        pos += len(ids)
    if pos != n:
        raise ValueError(f"neighbour blocks cover {pos} rows, expected {n}")
    return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])


# ----------------------------------------------------------------------------------------------- exact distances
def exact_dists(x: np.ndarray, splits: list[int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The dense metric between models `rows` and `cols`: mean over layers of l2, float64 (centred Gram)."""
    out = np.zeros((len(rows), len(cols)))
    for a, b in zip(splits[:-1], splits[1:]):
        c = x[cols, a:b].astype(np.float64)
        mu = c.mean(axis=0)
        c -= mu
        r = x[rows, a:b].astype(np.float64) - mu
        d2 = (r * r).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * _matmul_t(r, c)
        out += np.sqrt(np.maximum(d2, 0.0))
    return out / (len(splits) - 1)


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T in float64 (torch's BLAS: about twice numpy's speed on these shapes here)."""
    import torch

    return (torch.from_numpy(a) @ torch.from_numpy(b).T).numpy()


def pair_dists(x: np.ndarray, splits: list[int], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The dense metric of the pairs (i[t], j[t]), float64, from the differences themselves."""
    out = np.zeros(len(i))
    for a, b in zip(splits[:-1], splits[1:]):
        diff = x[i, a:b].astype(np.float64) - x[j, a:b]
        out += np.sqrt((diff * diff).sum(1))
    return out / (len(splits) - 1)


@dataclass
class Groups:
    """Connected parts of the neighbour graph, with exact candidate edges and pair sums inside each."""
    comp: np.ndarray                 # (n,) group of each model
    i: np.ndarray                    # candidate pairs i < j and their exact distances
    j: np.ndarray
    d: np.ndarray
    pair_sum: np.ndarray             # per group: sum of D over ordered pairs (i != j)
    floor: np.ndarray                # per model: a lower bound of its distance to any non-candidate in its group
    seconds: dict = field(default_factory=dict)


def group_candidates(x: np.ndarray, splits: list[int], nbr: np.ndarray, knn: int, block: int = 2048) -> Groups:
    """Groups from the neighbour graph `nbr` (n, pool); exact `knn` nearest inside each group, and pair sums."""
    n = x.shape[0]
    rows = np.repeat(np.arange(n), nbr.shape[1])
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, nbr.ravel())), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
    pi, pj, pd = [], [], []
    pair_sum = np.zeros(n_comp)
    floor = np.full(n, np.inf)         # groups of <= knn + 1 models: every pair is a candidate
    pos = np.empty(n, dtype=np.int64)
    for g in range(n_comp):
        members = order[bounds[g]:bounds[g + 1]]
        pos[members] = np.arange(len(members))
        k = min(knn, len(members) - 1)
        for s in range(0, len(members), block):
            rows_g = members[s:s + block]
            dist = exact_dists(x, splits, rows_g, members)
            pair_sum[g] += dist.sum() - np.trace(dist[:, s:s + len(rows_g)])
            if k == 0:
                continue
            dist[np.arange(len(rows_g)), s + np.arange(len(rows_g))] = np.inf
            # the neighbour-graph edges keep the group connected; a group in one block adds its exact MST
            pi.append(np.repeat(rows_g, nbr.shape[1]))
            pj.append(nbr[rows_g].ravel())
            pd.append(dist[np.arange(len(rows_g)).repeat(nbr.shape[1]), pos[nbr[rows_g].ravel()]])
            if len(members) <= block:
                w = np.where(np.isfinite(dist), np.maximum(dist, np.finfo(np.float64).tiny), 0.0)
                mst = minimum_spanning_tree(w).tocoo()
                pi.append(members[mst.row])
                pj.append(members[mst.col])
                pd.append(dist[mst.row, mst.col])
            near = np.argpartition(dist, k - 1, axis=1)[:, :k]
            pi.append(np.repeat(rows_g, k))
            pj.append(members[near].ravel())
            kept = np.take_along_axis(dist, near, axis=1)
            pd.append(kept.ravel())
            if k < len(members) - 1:
                floor[rows_g] = kept.max(axis=1)
    i, j, d = (np.concatenate(a) if a else np.zeros(0, t) for a, t in ((pi, int), (pj, int), (pd, float)))
    i, j, d = _unique_pairs(i, j, d)
    return Groups(comp, i, j, d, pair_sum, floor)


def _unique_pairs(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected pairs as (min, max), each once (sorted), with their distances."""
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo.astype(np.int64) * (int(max(hi.max(initial=0), 0)) + 1) + hi
    _, first = np.unique(key, return_index=True)
    return lo[first], hi[first], d[first]


# ----------------------------------------------------------------------------------------------- links between groups
def group_links(z: np.ndarray, comp: np.ndarray, strip: int = 512, sample: int = 64, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) joining the groups into one spanning tree: per pair of groups the closest models in the
    projection z (among up to `sample` seeded random members of each group), then a minimum spanning tree over
    groups. Returns two (n_groups - 1,) arrays of model ids."""
    import torch

    n_comp = int(comp.max()) + 1
    if n_comp == 1:
        return np.zeros(0, int), np.zeros(0, int)
    rng = np.random.default_rng(seed)
    members = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[members], np.arange(n_comp + 1))
    order = np.concatenate([np.sort(rng.permutation(members[a:b])[:sample]) for a, b in zip(bounds[:-1], bounds[1:])])
    cs = comp[order]
    starts = np.searchsorted(cs, np.arange(n_comp))
    zt = torch.from_numpy(np.ascontiguousarray(z[order], dtype=np.float32))
    sq = (zt * zt).sum(1)
    best = np.full((n_comp, n_comp), np.inf, dtype=np.float32)
    best_row = np.full((n_comp, n_comp), -1, dtype=np.int64)
    cols = np.arange(n_comp)
    for s in range(0, len(order), strip):
        e = min(s + strip, len(order))
        d2 = (sq[s:e, None] + sq[None, :] - 2.0 * (zt[s:e] @ zt.T)).numpy()
        mins = np.minimum.reduceat(d2, starts, axis=1)
        rc = cs[s:e]
        mins[np.arange(e - s), rc] = np.inf
        for a in np.unique(rc):
            local = np.flatnonzero(rc == a)
            am = mins[local].argmin(axis=0)
            v = mins[local[am], cols]
            better = v < best[a]
            best[a, better] = v[better]
            best_row[a, better] = s + local[am[better]]
    sym = np.minimum(best, best.T).astype(np.float64)
    sym = np.maximum(sym, np.finfo(np.float64).tiny)     # csgraph reads an explicit 0 as "no edge"
    np.fill_diagonal(sym, 0.0)
    mst = minimum_spanning_tree(sym).tocoo()
    li, lj = [], []
    for a, b in zip(mst.row, mst.col):
        if best[b, a] < best[a, b]:
            a, b = b, a
        r = int(best_row[a, b])
        members = np.arange(starts[b], starts[b + 1] if b + 1 < n_comp else len(order))
        d2 = (sq[members] - 2.0 * (zt[members] @ zt[r])).numpy()   # within b's sample: the pair behind best
        li.append(int(order[r]))
        lj.append(int(order[members[int(np.argmin(d2))]]))
    return np.array(li, dtype=int), np.array(lj, dtype=int)


# ----------------------------------------------------------------------------------------------- clustering
def single_linkage(n: int, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> np.ndarray:
    """scipy linkage matrix of single linkage restricted to the pairs (i, j, d): Kruskal on their minimum
    spanning tree. The pairs must connect all n models."""
    w = np.maximum(d, np.finfo(np.float64).tiny)         # csgraph reads an explicit 0 as "no edge"
    mst = minimum_spanning_tree(coo_matrix((w, (i, j)), shape=(n, n))).tocoo()
    if mst.nnz != n - 1:
        raise ValueError(f"candidate graph is not connected: its spanning forest has {n - 1 - mst.nnz + 1} parts")
    h = np.where(mst.data <= np.finfo(np.float64).tiny, 0.0, mst.data)
    edges = sorted(zip(h.tolist(), mst.row.tolist(), mst.col.tolist()))
    root = list(range(n))
    cluster_id = list(range(n))
    size = [1] * n
    z = np.zeros((n - 1, 4))

    def find(a: int) -> int:
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    for t, (h, a, b) in enumerate(edges):
        ra, rb = find(a), find(b)
        ca, cb = sorted((cluster_id[ra], cluster_id[rb]))
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        root[rb] = ra
        size[ra] += size[rb]
        cluster_id[ra] = n + t
        z[t] = (ca, cb, h, size[ra])
    return z


def cluster_sparse(n: int, i: np.ndarray, j: np.ndarray, d: np.ndarray, cluster: dict) -> Clustering:
    """recovery.cluster's single-linkage clustering on the candidate graph (only `linkage: single`)."""
    opts = merge_options(ClusterOptions, cluster, "recovery.cluster")
    if opts["linkage"] != "single":
        raise ConfigError(f"recovery.candidates=knn clusters with single linkage only, got linkage={opts['linkage']!r}")
    if n == 1:
        return Clustering(np.zeros(1, dtype=int), 1, {"rule": "one model", "heights": []})
    return cluster_linkage(single_linkage(n, i, j, d), opts["n_trees"], "single",
                           min_gap_ratio=opts["min_gap_ratio"], threshold=opts["threshold"])


def cluster_lambdas(x: np.ndarray, splits: list[int], groups: Groups, labels: np.ndarray, c: float,
                    block: int = 2048) -> dict[int, float]:
    """lambda = c * sum(D) / n^2 per cluster, exact: group pair sums plus cross-group blocks within a cluster."""
    lams = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        parts = [members[groups.comp[members] == g] for g in np.unique(groups.comp[members])]
        total = float(sum(groups.pair_sum[groups.comp[p[0]]] for p in parts))
        for a in range(len(parts)):
            for b in range(a + 1, len(parts)):
                for s in range(0, len(parts[a]), block):
                    total += 2.0 * exact_dists(x, splits, parts[a][s:s + block], parts[b]).sum()
        lams[int(label)] = float(c) * total / len(members) ** 2
    return lams


def edge_costs(i: np.ndarray, j: np.ndarray, d: np.ndarray, direction: np.ndarray, generalization: np.ndarray,
               lam: float, stage_order: bool = True) -> np.ndarray:
    """recovery.mother.cost_matrix's M[i, j] for the edges i -> j only (same terms, same lambda)."""
    k = np.asarray(direction, dtype=np.float64)
    t = np.asarray(generalization, dtype=bool)
    m = d + lam * ((k[i] < k[j]) ^ t[j])
    if stage_order:
        m = m + lam * (~t[i] & t[j])
    return m


def _solve_cluster(n: int, s: np.ndarray, t: np.ndarray, cost: np.ndarray, dense_max: int
                   ) -> tuple[np.ndarray, dict]:
    """Free-root minimum arborescence over local edges s -> t and its duals (mdst on a masked matrix when small)."""
    duals: dict = {}
    if n <= dense_max:        # same optimum, vectorised: the candidate edges in a matrix, +inf elsewhere
        m = np.full((n, n), np.inf)
        m[s, t] = cost
        return min_arborescence(m, duals=duals), duals
    return min_arborescence_sparse(n, s, t, cost, duals=duals), duals


def recover_forest_sparse(i: np.ndarray, j: np.ndarray, d: np.ndarray, direction: np.ndarray,
                          generalization: np.ndarray, labels: np.ndarray, lams: dict[int, float],
                          stage_order: bool = True, dense_max: int = 2000, floor: np.ndarray | None = None,
                          rows=None, max_rounds: int = 20) -> tuple[np.ndarray, dict]:
    """recovery.mother.recover_forest on candidate pairs (i, j, d): per cluster, the minimum spanning
    arborescence of M restricted to both directions of the pairs inside it (recovery.mdst on a +inf-masked
    matrix up to `dense_max` models, else `min_arborescence_sparse`).

    With `floor` (per model, a lower bound of its distance to any model of its cluster it has no candidate pair
    with) and `rows(v, cols)` (exact distances), the result is certified optimal over all pairs of each cluster:
    Edmonds' duals bound what any missing edge into v would have to cost to improve the tree; where the floor does
    not clear that bound, v's exact distances to its cluster are computed, the pairs that could matter added, and
    the cluster solved again (until none is missing, at most `max_rounds` times).

    Returns the global parent array and evidence {"added_pairs", "rounds", "uncertified_clusters", "pairs": the
    added pairs as (i, j, d) arrays}.
    """
    labels = np.asarray(labels)
    same = labels[i] == labels[j]
    i, j, d = i[same], j[same], d[same]
    order = np.argsort(labels[i], kind="stable")
    i, j, d = i[order], j[order], d[order]
    lab = labels[i]
    parent = np.full(len(labels), -1)
    local = np.full(len(labels), -1)
    evidence = {"added_pairs": 0, "rounds": 0, "uncertified_clusters": []}
    extra: list[tuple[int, int, float]] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) == 1:
            continue
        lo, hi = np.searchsorted(lab, [label, label + 1])
        ci, cj, cd = i[lo:hi], j[lo:hi], d[lo:hi]
        local[idx] = np.arange(len(idx))
        for rnd in range(max_rounds + 1):
            s, t, w = np.concatenate([ci, cj]), np.concatenate([cj, ci]), np.concatenate([cd, cd])
            cost = edge_costs(s, t, w, direction, generalization, lams[int(label)], stage_order)
            p, duals = _solve_cluster(len(idx), local[s], local[t], cost, dense_max)
            if floor is None or rows is None:
                break
            need = chain_sums(duals, len(idx))
            check = np.flatnonzero(floor[idx] - duals["shift"] <= need * (1 + 1e-9) + 1e-12)
            if len(check) == 0:
                break
            if rnd == max_rounds:
                evidence["uncertified_clusters"].append(int(label))
                break
            dist = rows(idx[check], idx)
            known = set(zip(ci.tolist(), cj.tolist()))
            vi, ui = np.nonzero(dist - duals["shift"] <= need[check][:, None] * (1 + 1e-9) + 1e-12)
            add = [(min(a, b), max(a, b), v) for a, b, v in zip(idx[check][vi].tolist(), idx[ui].tolist(),
                                                               dist[vi, ui].tolist())
                   if a != b and (min(a, b), max(a, b)) not in known]
            add = list({(a, b): (a, b, v) for a, b, v in add}.values())
            if not add:
                break
            evidence["added_pairs"] += len(add)
            extra += add
            evidence["rounds"] += 1
            ci = np.concatenate([ci, [a for a, _, _ in add]])
            cj = np.concatenate([cj, [b for _, b, _ in add]])
            cd = np.concatenate([cd, [v for _, _, v in add]])
            floor = floor.copy()
            floor[idx[check]] = np.inf           # their exact rows are in: every pair that could matter is a candidate
        has = p >= 0
        parent[idx[has]] = idx[p[has]]
    evidence["pairs"] = tuple(np.array([e[t] for e in extra], dtype=float if t == 2 else int) for t in range(3))
    return parent, evidence


# ----------------------------------------------------------------------------------------------- whole recovery
@dataclass
class SparseResult:
    """What `recover_matrix` found: clusters, parents, lambdas, the candidate pairs and timings."""
    clustering: Clustering
    parent: np.ndarray
    lambdas: dict[int, float]
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    n_groups: int
    seconds: dict
    added: tuple = ()          # (i, j, d) of the pairs the certificate added to the nearest-neighbour candidates

    def edge_distance(self, p: int, c: int) -> float:
        """Exact distance of the candidate pair (p, c)."""
        lo, hi = min(p, c), max(p, c)
        t = np.flatnonzero((self.i == lo) & (self.j == hi))
        return float(self.d[t[0]]) if len(t) else float("nan")


def neighbours(x: np.ndarray, opts: dict, blocks: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (n, pool) projected neighbours of every row: computed here, or merged from precomputed row blocks
    [(start, ids, d2), ...] (the SLURM array's output)."""
    n = x.shape[0]
    if blocks is not None:
        return merge_blocks(blocks, n)
    z = project(x, opts["project_dim"], opts["seed"])
    return knn_block(z, 0, n, opts["pool"], opts["strip"])


def recover_matrix(x: np.ndarray, direction: np.ndarray, generalization: np.ndarray | None = None, *,
                   splits: list[int] | None = None, sparse: dict | None = None, cluster: dict | None = None,
                   c: float = 0.3, stage_order: bool = True, blocks: list | None = None) -> SparseResult:
    """The paper's recovery (cluster on l2, MDST of D + lambda (K xor T) per cluster) on candidate edges.

    Args:
        x: (n, p) float32, each model's distance layers flattened side by side.
        direction: (n,) direction scores (kurtosis summed over the direction layers, as the dense path).
        generalization: (n,) bool stages (default all specialization).
        splits: column offsets of the layers in x ([0, p] for one layer); the distance is the mean of per-layer l2.
        sparse: options (recovery.config.SparseOptions); cluster: recovery.cluster options; c, stage_order:
            recovery.tree.
        blocks: precomputed neighbour row blocks (recovery.sparse_slurm), else computed here.
    """
    opts = sparse_options(sparse)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    splits = list(splits) if splits is not None else [0, x.shape[1]]
    gen = np.zeros(n, dtype=bool) if generalization is None else np.asarray(generalization, dtype=bool)
    if len(direction) != n or len(gen) != n:
        raise ValueError(f"{n} models but {len(direction)} direction scores and {len(gen)} stages")
    secs: dict[str, float] = {}
    t = time.perf_counter()
    nbr, _ = neighbours(x, opts, blocks)
    secs["neighbours_s"] = time.perf_counter() - t
    t = time.perf_counter()
    groups = group_candidates(x, splits, nbr, opts["knn"], opts["exact_block"])
    secs["groups_s"] = time.perf_counter() - t
    t = time.perf_counter()
    li, lj = group_links(project(x, opts["project_dim"], opts["seed"]), groups.comp, opts["strip"],
                         opts["link_sample"], opts["seed"])
    ld = pair_dists(x, splits, li, lj)
    i, j, d = _unique_pairs(np.concatenate([groups.i, li]), np.concatenate([groups.j, lj]),
                            np.concatenate([groups.d, ld]))
    secs["links_s"] = time.perf_counter() - t
    t = time.perf_counter()
    clustering = cluster_sparse(n, i, j, d, cluster or {})
    clustering.evidence["candidates"] = {"pairs": int(len(i)), "groups": int(groups.comp.max()) + 1,
                                         "links": int(len(li)), **{k: opts[k] for k in ("knn", "pool", "project_dim")}}
    lams = cluster_lambdas(x, splits, groups, clustering.labels, c, opts["exact_block"])
    secs["cluster_s"] = time.perf_counter() - t
    t = time.perf_counter()
    floor = groups.floor.copy()
    multi = [lab for lab in np.unique(clustering.labels)
             if len(np.unique(groups.comp[clustering.labels == lab])) > 1]
    floor[np.isin(clustering.labels, multi)] = 0.0     # no bound across groups: check those models directly
    parent, cert = recover_forest_sparse(i, j, d, direction, gen, clustering.labels, lams, stage_order,
                                         opts["dense_max"], floor, lambda r, c: exact_dists(x, splits, r, c))
    ai, aj, ad = added = cert.pop("pairs")
    i, j, d = _unique_pairs(np.concatenate([i, ai]), np.concatenate([j, aj]), np.concatenate([d, ad]))
    clustering.evidence["candidates"]["certificate"] = cert
    secs["arborescence_s"] = time.perf_counter() - t
    log.info("sparse recovery of %d models: %d candidate pairs, %d groups, %d clusters; %s", n, len(i),
             int(groups.comp.max()) + 1, clustering.n_clusters, {k: round(v, 2) for k, v in secs.items()})
    return SparseResult(clustering, parent, lams, i, j, d, int(groups.comp.max()) + 1, secs, added)
