"""Minimum directed spanning tree (arborescence): Chu-Liu/Edmonds, Tarjan's O(n^2) form on a dense cost matrix.

`cost[i, j]` is the cost of the edge i -> j (i the parent). Cycles are found by growing one path of cheapest
incoming edges at a time; a cycle is contracted into a new super node whose incoming costs are the members'
costs minus the cost of the cycle edge they would give up (one vectorised row operation). Every contraction
removes at least one node, so the whole run is O(n^2) work in O(n) numpy calls; the expansion at the end walks
the contraction forest once (Tarjan 1977 with the Camerini et al. 1979 correction).

With `root=None` the best root is chosen too: a virtual super-root gets an edge of one large constant cost into
every node, larger than any spanning tree's total, so the optimum uses exactly one of them.

`min_arborescence_sparse` gives the same answer on a candidate edge list (recovery.sparse): each node's incoming
edges in a binary heap with a lazy offset, merged small into large when a cycle is contracted. Both can return
Edmonds' dual solution; `chain_sums` turns it into the per-node bound that certifies a candidate graph.
"""
from __future__ import annotations

import heapq

import numpy as np

_UNSEEN, _ON_PATH, _DONE = 0, 1, 2


def min_arborescence(cost: np.ndarray, root: int | None = None, duals: dict | None = None) -> np.ndarray:
    """Minimum spanning arborescence of the complete digraph with edge costs `cost`.

    Args:
        cost: (n, n) edge costs, `cost[i, j]` for i -> j. The diagonal is ignored; `+inf` marks a missing edge.
        root: node forced to be the root, or None to choose the root that gives the cheapest tree.
        duals: if a dict, receives Edmonds' dual solution (recovery.sparse certifies candidate graphs with it):
            `forest` (super node of each node, -1 at the top), `y` (the reduced cost each node or super node paid
            for its in-edge), `src` (that edge's source; n = the virtual root) and `shift` (the constant taken off
            every cost first: edge costs minus it, less the y of the super nodes holding its head but not its tail,
            are >= 0).

    Returns:
        (n,) int array: `parent[j]` is the parent of node j, -1 for the root.

    Raises:
        ValueError: bad matrix (not square, NaN, -inf), bad root, or no spanning arborescence exists.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square matrix, got shape {cost.shape}")
    n = cost.shape[0]
    if n == 0:
        raise ValueError("cost matrix is empty: no nodes")
    diag = np.diag(cost)
    if np.isnan(cost).sum() > np.isnan(diag).sum() or np.isneginf(cost).sum() > np.isneginf(diag).sum():
        raise ValueError("cost matrix holds NaN or -inf off the diagonal")
    if root is not None and not 0 <= root < n:
        raise ValueError(f"root {root} out of range for {n} nodes")
    if n == 1:
        return np.array([-1])

    incoming, top = _incoming_matrix(cost, root)
    parent = _edmonds(incoming, top, duals)
    if duals is not None:
        duals["shift"] = 0.0 if root is not None else _shift(cost)
    return root_parent(parent, n, root, "finite edges")


def find_root(comp: list[int] | np.ndarray, x: int) -> int:
    """Union-find: the representative of `x` in the parent list `comp`, compressing the path on the way."""
    r = x
    while comp[r] != r:
        r = comp[r]
    while comp[x] != r:
        comp[x], x = r, comp[x]
    return r


def root_parent(parent: np.ndarray, n: int, root: int | None, edges: str) -> np.ndarray:
    """Parents of an arborescence solved with a virtual top node `n` when `root` is None: the one child of the
    top becomes the root (-1); more than one means the `edges` leave separate parts (ValueError)."""
    if root is not None:
        parent[root] = -1
        return parent
    roots = np.flatnonzero(parent[:n] == n)
    if len(roots) != 1:
        raise ValueError(f"no spanning arborescence: the {edges} leave {len(roots)} separate parts")
    parent = parent[:n].copy()
    parent[roots[0]] = -1
    return parent


def arborescence_cost(cost: np.ndarray, parent: np.ndarray) -> float:
    """Total cost of the tree given by a parent array (-1 marks the root)."""
    child = np.flatnonzero(np.asarray(parent) >= 0)
    return float(np.asarray(cost, dtype=np.float64)[np.asarray(parent)[child], child].sum())


def is_arborescence(parent: np.ndarray) -> bool:
    """True when `parent` describes one tree: exactly one root and every node reaches it without a cycle."""
    parent = np.asarray(parent)
    n = len(parent)
    if (parent == -1).sum() != 1 or ((parent < -1) | (parent >= n)).any():
        return False
    depth = np.full(n, -1)
    for start in range(n):
        trail, x = [], start
        while x != -1 and depth[x] < 0:
            if x in trail:
                return False
            trail.append(x)
            x = parent[x]
        base = -1 if x == -1 else depth[x]
        for k, node in enumerate(reversed(trail)):
            depth[node] = base + 1 + k
    return True


def _incoming_matrix(cost: np.ndarray, root: int | None) -> tuple[np.ndarray, int]:
    """Transposed costs (row v = costs of edges into v, contiguous) and the id of the root to grow from.

    For a free root a virtual node n is appended with edges of cost `big` into every node; finite costs are
    shifted to start at 0 first (every tree has the same number of edges, so the optimum is unchanged).
    """
    n = cost.shape[0]
    if root is not None:
        incoming = np.ascontiguousarray(cost.T)
        np.fill_diagonal(incoming, np.inf)
        incoming[root, :] = np.inf
        return incoming, root
    finite = cost[np.isfinite(cost) & ~np.eye(n, dtype=bool)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    big = n * (hi - lo) + 1.0  # > (n - 1) * (hi - lo): one super-root edge always beats two
    incoming = np.empty((n + 1, n + 1))
    incoming[:n, :n] = cost.T
    incoming[:n, :n] -= lo
    incoming[:n, n] = big
    incoming[n, :] = np.inf
    np.fill_diagonal(incoming, np.inf)
    return incoming, n


def _shift(cost: np.ndarray) -> float:
    """The constant `_incoming_matrix` subtracts from every finite cost for a free root."""
    finite = cost[np.isfinite(cost) & ~np.eye(cost.shape[0], dtype=bool)]
    return float(finite.min()) if finite.size else 0.0


def _edmonds(incoming: np.ndarray, top: int, duals: dict | None = None) -> np.ndarray:
    """Parent array of the minimum arborescence rooted at `top` (`incoming` is overwritten)."""
    m = incoming.shape[0]
    ids = 2 * m  # original nodes 0..m-1, super nodes m..2m-2
    forest = np.full(ids, -1)          # contraction forest: super node containing this one
    comp = np.arange(ids)              # union-find over the same ids (path-compressed copy of `forest`)
    row_of = np.arange(ids)            # row of `incoming` holding a node's incoming costs
    state = np.zeros(ids, dtype=np.int8)
    in_src = np.full(ids, -1)
    in_dst = np.full(ids, -1)
    in_cost = np.zeros(ids)
    children: dict[int, list[int]] = {}
    members: dict[int, np.ndarray] = {}
    dst_of: dict[int, np.ndarray] = {}  # super node -> original destination of its best edge from each source
    state[top] = _DONE
    next_id = m

    def find(x: int) -> int:
        return find_root(comp, x)

    first = np.argmin(incoming, axis=1)  # every original node's cheapest incoming edge, in one pass
    for start in range(m):
        if state[find(start)] != _UNSEEN:
            continue
        a, path, pos = start, [], {}
        while True:
            row = incoming[row_of[a]]
            u = int(first[a]) if a < m else int(np.argmin(row))
            if not np.isfinite(row[u]):
                raise ValueError(f"no spanning arborescence: node {start} cannot be reached from the root")
            in_src[a], in_cost[a] = u, row[u]
            in_dst[a] = dst_of[a][u] if a in dst_of else a
            pos[a] = len(path)
            path.append(a)
            state[a] = _ON_PATH
            b = find(u)
            if state[b] == _DONE:
                state[path] = _DONE
                break
            if state[b] == _UNSEEN:
                a = b
                continue
            cycle = path[pos[b]:]
            del path[pos[b]:]
            for x in cycle:
                del pos[x]
            a, next_id = next_id, next_id + 1
            _contract(incoming, a, cycle, row_of, in_cost, members, dst_of, m)
            children[a] = cycle
            forest[cycle] = a
            comp[cycle] = a

    if duals is not None:
        duals.update(forest=forest[:next_id].copy(), y=in_cost[:next_id].copy(), src=in_src[:next_id].copy())
    parent = np.full(m, -1)
    stack = [x for x in range(next_id) if forest[x] == -1 and x != top]
    while stack:
        x = stack.pop()
        v = in_dst[x]
        parent[v] = in_src[x]
        below, y = v, forest[v]
        while below != x:  # dissolve the super nodes between leaf v and x; their other parts keep their edges
            stack.extend(ch for ch in children[y] if ch != below)
            below, y = y, forest[y]
    return parent


def _contract(incoming: np.ndarray, new: int, cycle: list[int], row_of: np.ndarray, in_cost: np.ndarray,
              members: dict[int, np.ndarray], dst_of: dict[int, np.ndarray], m: int) -> None:
    """Merge the incoming rows of the nodes on `cycle` into one row for super node `new`."""
    rows = incoming[row_of[cycle]] - in_cost[cycle][:, None]
    best = np.argmin(rows, axis=0)
    cols = np.arange(m)
    merged = rows[best, cols]
    dst = np.stack([dst_of.pop(x) if x in dst_of else np.full(m, x) for x in cycle])[best, cols]
    inside = np.concatenate([members.pop(x) if x in members else np.array([x]) for x in cycle])
    merged[inside] = np.inf  # edges between members are internal now
    row_of[new] = row_of[cycle[0]]
    incoming[row_of[new]] = merged
    members[new], dst_of[new] = inside, dst


# ------------------------------------------------------------------------------ sparse candidate graphs
def min_arborescence_sparse(n: int, src: np.ndarray, dst: np.ndarray, cost: np.ndarray,
                            root: int | None = None, duals: dict | None = None) -> np.ndarray:
    """Minimum spanning arborescence of the digraph with edges src[e] -> dst[e] of cost cost[e].

    The same answer as `min_arborescence` on the dense matrix that holds these edges (+inf
    elsewhere), including the free root (`root=None`: a virtual root with one large edge into every node).
    Edmonds / Tarjan path growing; each node's incoming edges in a binary heap with a lazy offset, merged small into
    large when a cycle is contracted.

    `duals`, if a dict, receives Edmonds' dual solution as `min_arborescence` gives it.

    Returns:
        (n,) parent array, -1 for the root.

    Raises:
        ValueError: bad input, or no spanning arborescence over these edges.
    """
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    if not (src.shape == dst.shape == cost.shape) or src.ndim != 1:
        raise ValueError(f"src, dst, cost must be equal-length vectors, got {src.shape}, {dst.shape}, {cost.shape}")
    if n < 1:
        raise ValueError("no nodes")
    if ((src < 0) | (src >= n) | (dst < 0) | (dst >= n)).any():
        raise ValueError(f"edge endpoints out of range for {n} nodes")
    if np.isnan(cost).any() or np.isneginf(cost).any():
        raise ValueError("edge costs hold NaN or -inf")
    if root is not None and not 0 <= root < n:
        raise ValueError(f"root {root} out of range for {n} nodes")
    if n == 1:
        return np.array([-1])
    keep = (src != dst) & np.isfinite(cost)
    if root is not None:
        keep &= dst != root
    src, dst, cost = src[keep], dst[keep], cost[keep]
    top, lo = root, 0.0
    if root is None:
        lo, hi = (float(cost.min()), float(cost.max())) if cost.size else (0.0, 0.0)
        big = n * (hi - lo) + 1.0
        cost = cost - lo
        src = np.concatenate([src, np.full(n, n)])
        dst = np.concatenate([dst, np.arange(n)])
        cost = np.concatenate([cost, np.full(n, big)])
        top = n
    parent = _edmonds_sparse(n + (root is None), src, dst, cost, top, duals)
    if duals is not None:
        duals["shift"] = lo
    return root_parent(parent, n, root, "candidate edges")


def _edmonds_sparse(m: int, src: np.ndarray, dst: np.ndarray, cost: np.ndarray, top: int,
                    duals: dict | None = None) -> np.ndarray:
    """Parent array of the minimum arborescence of m nodes rooted at `top` over the given edges."""
    order = np.lexsort((np.arange(len(dst)), cost, dst))
    bounds = np.searchsorted(dst[order], np.arange(m + 1))
    heaps: list[list] = [list(zip(cost[order[a:b]].tolist(), order[a:b].tolist()))
                         for a, b in zip(bounds[:-1], bounds[1:])]    # sorted lists are valid heaps
    heaps += [[] for _ in range(m)]                       # super nodes m .. 2m-2
    offset = [0.0] * (2 * m)
    comp = list(range(2 * m))
    forest = [-1] * (2 * m)
    state = [_UNSEEN] * (2 * m)
    in_edge = [-1] * (2 * m)
    in_cost = [0.0] * (2 * m)
    children: dict[int, list[int]] = {}
    src_l = src.tolist()

    def find(a: int) -> int:
        return find_root(comp, a)

    state[top] = _DONE
    next_id = m
    for start in range(m):
        a = find(start)
        if state[a] != _UNSEEN:
            continue
        path: list[int] = []
        pos: dict[int, int] = {}
        while True:
            h = heaps[a]
            while h and find(src_l[h[0][1]]) == a:
                heapq.heappop(h)
            if not h:
                raise ValueError(f"no spanning arborescence: node {start} cannot be reached from the root")
            c, e = heapq.heappop(h)
            in_edge[a], in_cost[a] = e, c + offset[a]
            pos[a] = len(path)
            path.append(a)
            state[a] = _ON_PATH
            b = find(src_l[e])
            if state[b] == _DONE:
                for x in path:
                    state[x] = _DONE
                break
            if state[b] == _UNSEEN:
                a = b
                continue
            cycle = path[pos[b]:]
            del path[pos[b]:]
            for x in cycle:
                del pos[x]
            a, next_id = next_id, next_id + 1
            big = max(cycle, key=lambda x: len(heaps[x]))
            merged, base = heaps[big], offset[big] - in_cost[big]
            for x in cycle:
                if x != big:
                    shift = offset[x] - in_cost[x] - base
                    for c2, e2 in heaps[x]:
                        heapq.heappush(merged, (c2 + shift, e2))
                    heaps[x] = []
                comp[x] = a
                forest[x] = a
            heaps[big] = []
            heaps[a], offset[a] = merged, base
            children[a] = cycle

    if duals is not None:
        duals.update(forest=np.array(forest[:next_id]), y=np.array(in_cost[:next_id]),
                     src=np.array([src_l[e] if e >= 0 else -1 for e in in_edge[:next_id]]))
    parent = np.full(m, -1)
    dst_l = dst.tolist()
    stack = [x for x in range(next_id) if forest[x] == -1 and x != top]
    while stack:
        x = stack.pop()
        v = dst_l[in_edge[x]]
        parent[v] = src_l[in_edge[x]]
        below, y = v, forest[v]
        while below != x:      # dissolve the super nodes between leaf v and x; their other parts keep their edges
            stack.extend(ch for ch in children[y] if ch != below)
            below, y = y, forest[y]
    return parent


def chain_sums(duals: dict, n: int) -> np.ndarray:
    """Per node 0..n-1, the sum of the duals y of the node and of every super node holding it, leaving out the one
    that took its in-edge from the virtual root (it holds every node). Any edge u -> v not on the candidate graph
    whose cost, less `duals["shift"]`, is at least this sum at v keeps the arborescence optimal with it added."""
    forest, y, src = duals["forest"], duals["y"], duals["src"]
    own = np.where(src == n, 0.0, y)
    total = np.zeros(len(forest))
    for x in range(len(forest) - 1, -1, -1):      # a super node's id exceeds those of its members
        total[x] = own[x] + (total[forest[x]] if forest[x] >= 0 else 0.0)
    return total[:n]
