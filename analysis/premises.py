"""The paper's two premises, measured on a graph with a known heritage (never on recovery scores).

Distance premise (paper Fig. 1): weight distance grows with the number of tree edges between two models, so the
nearest model is the parent or a child. Direction premise (Sec. 4.2): kurtosis falls from parent to child during
fine-tuning. `premise_measures` gives both for one graph from its weight analysis; the calibration experiment
reports them per built graph config, and the accuracy experiments attach them to each recovered graph so that a
result that differs from the paper's says why (`premise_note`).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

import numpy as np

from recovery.ties import less_with_ties


def hop_distances(nodes: list[str], edges: list[list[str]]) -> dict[str, dict[str, int]]:
    """Undirected number of edges between every pair of `nodes` (BFS from each; unreachable pairs left out)."""
    adj: dict[str, list[str]] = {n: [] for n in nodes}
    for p, c in edges:
        if p in adj and c in adj:
            adj[p].append(c)
            adj[c].append(p)
    out = {}
    for s in nodes:
        dist, queue = {s: 0}, deque([s])
        while queue:
            x = queue.popleft()
            for y in adj[x]:
                if y not in dist:
                    dist[y] = dist[x] + 1
                    queue.append(y)
        out[s] = dist
    return out


def trees_of(graph: Mapping) -> dict[str, list[str]]:
    """root id -> the ids of its tree, in graph order."""
    parent = {c: p for p, c in graph["edges"]}

    def top(n: str) -> str:
        while n in parent:
            n = parent[n]
        return n
    out: dict[str, list[str]] = {}
    for n in graph["nodes"]:
        out.setdefault(top(n), []).append(n)
    return out


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation (nan when either side is constant)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")


def path_edges(u: str, v: str, parent: Mapping[str, str]) -> list[str]:
    """The children naming the tree edges on the path between `u` and `v` (each edge by its child)."""
    up = [u]
    while up[-1] in parent:
        up.append(parent[up[-1]])
    seen = set(up)
    down = [v]
    while down[-1] not in seen:
        down.append(parent[down[-1]])
    meet = down[-1]
    return up[:up.index(meet)] + down[:-1]


def path_prediction(lengths: list[float], metric: str) -> float:
    """A pair's distance predicted from the edges on its path: ranks add; l2 moves add in quadrature."""
    return float(sum(lengths)) if "rank" in metric else float(np.sqrt(np.sum(np.square(lengths))))


def tree_measures(members: list[str], edges: list[list[str]], dist: np.ndarray, index: Mapping[str, int],
                  tasks: Mapping[str, str], metric: str = "l2", tree: list[str] | None = None) -> dict[str, Any]:
    """rho (distance vs hops and vs the path prediction), nearest-is-neighbour and same-task attraction in one tree.

    `members` are the tree's models that were measured (in `index`); `tree` is the whole tree (default: `members`),
    which gives the hops when recovery left a model out. A pair whose path crosses an unmeasured edge has no path
    prediction. `rho_ceiling` is the Fig. 1 rho this tree would show if every pair's distance were exactly its path
    prediction from the measured edges: what the edges' sizes alone allow (1.0 only when every edge has one size;
    LoRA ranks drawn from {8, 16, 32, 64} allow ~0.7 however additive the ranks are). `edge_length_spread` is the
    largest / smallest edge in the distance measured."""
    hops = hop_distances(tree or members, edges)
    parent = {c: p for p, c in edges if p in hops and c in hops}
    edge_len = {c: float(dist[index[p], index[c]]) for c, p in parent.items() if p in index and c in index}
    median_edge = float(np.median(list(edge_len.values()))) if edge_len else math.nan
    xs, ys, paired, same, other = [], [], [], [], []
    for a, u in enumerate(members):
        for v in members[a + 1:]:
            d = float(dist[index[u], index[v]])
            xs.append(hops[u][v])
            ys.append(d)
            path = path_edges(u, v, parent)
            if all(c in edge_len for c in path):
                paired.append((hops[u][v], path_prediction([edge_len[c] for c in path], metric), d))
            if hops[u][v] > 1 and tasks.get(u) and tasks.get(v):
                (same if tasks[u] == tasks[v] else other).append(d < median_edge)
    near = [hops[u][min((v for v in members if v != u), key=lambda v: dist[index[u], index[v]])] == 1
            for u in members] if len(members) > 1 else []
    ph, preds, pd_ = ([list(col) for col in zip(*paired)] if paired else ([], [], []))
    ratio = [y / p for p, y in zip(preds, pd_) if p > 0]
    return {"rho": pearson(xs, ys), "rho_path": pearson(preds, pd_), "rho_ceiling": pearson(ph, preds),
            "edge_length_spread": max(edge_len.values()) / min(edge_len.values())
            if edge_len and min(edge_len.values()) > 0 else math.nan,
            "additivity": float(np.median(ratio)) if ratio else math.nan,
            "nearest_is_neighbour": float(np.mean(near)) if near else math.nan, "pairs": len(xs),
            "same_task_closer": float(np.mean(same)) if same else math.nan, "same_task_pairs": len(same),
            "other_task_closer": float(np.mean(other)) if other else math.nan, "other_task_pairs": len(other)}


# How the tables explain `premise_measures`' root_direction / direction_drop columns.
DIRECTION_ROOM_NOTE = ("root kurtosis/layer: the roots' direction statistic (kurtosis, 3 for a Gaussian) averaged "
                       "over the direction layers; median fall/layer: the median edge's fall in it (parent - child)")


def direction_falls(edges: list[list[str]], wa: Any) -> float:
    """Share of the (parent, child) `edges` measured in `wa` whose child comes first in recovery's direction order
    (nan: none): the lower direction score, or, between models equal on every direction layer, the lower score on
    the other layers (`wa.ties`, recovery.ties)."""
    index = {m: i for i, m in enumerate(wa.ids)}
    less = less_with_ties(wa.direction, wa.ties)
    falls = [float(less[index[c], index[p]]) for p, c in edges if p in index and c in index]
    return float(np.mean(falls)) if falls else math.nan


def premise_measures(graph: Mapping, wa: Any) -> dict[str, Any]:
    """The measures of the paper's two premises on one graph, from its weight analysis `wa` (recovery's distances
    and direction scores): per tree and averaged over the trees, Fig. 1 / path rho, additivity, nearest model is
    parent/child, same-task attraction, the rho the edge sizes allow (ceiling); and the share of edges where the
    direction score (kurtosis) falls; the roots' direction statistic per layer (`root_direction`, mean over the
    roots) and the median of each edge's fall in it per layer (`direction_drop`): how much room the roots leave."""
    index = {m: i for i, m in enumerate(wa.ids)}
    meta = graph["meta"]
    tasks = {n: meta[n].get("task") for n in graph["nodes"] if meta[n].get("parent") is not None}
    per_layer = np.asarray(wa.direction_per_layer, dtype=np.float64)   # (models, direction layers)
    layered = per_layer.ndim == 2 and per_layer.shape[1] > 0
    roots = [index[n] for n in graph["nodes"] if meta[n].get("parent") is None and n in index] if layered else []
    drops = [float(np.nanmean(per_layer[index[p]] - per_layer[index[c]])) for p, c in graph["edges"]
             if layered and p in index and c in index]
    per_tree = {root: tree_measures([m for m in members if m in index], graph["edges"], wa.distance, index, tasks,
                                    wa.distance_metric, tree=members) for root, members in trees_of(graph).items()}

    def mean(key: str) -> float:  # over the trees where the measure applies (nan when none)
        vals = [t[key] for t in per_tree.values() if not math.isnan(t[key])]
        return float(np.mean(vals)) if vals else math.nan
    return {"metric": wa.distance_metric, "rho": mean("rho"), "rho_path": mean("rho_path"),
            "rho_ceiling": mean("rho_ceiling"), "edge_length_spread": mean("edge_length_spread"),
            "additivity": mean("additivity"), "nearest_is_neighbour": mean("nearest_is_neighbour"),
            "same_task_closer": mean("same_task_closer"), "other_task_closer": mean("other_task_closer"),
            "kurtosis_falls": direction_falls(graph["edges"], wa),
            "root_direction": float(np.mean([np.nanmean(per_layer[r]) for r in roots])) if roots else math.nan,
            "direction_drop": float(np.median(drops)) if drops else math.nan, "per_tree": per_tree}


def premise_note(p: Mapping) -> str:
    """`premise_measures` as a note: why recovery places or directs edges wrong on that graph."""
    return (f"on this graph the nearest model is the parent or a child for {100 * p['nearest_is_neighbour']:.0f}% "
            f"of models, {p['metric']} vs tree distance rho {p['rho']:.2f} (paper Fig. 1: 0.99), kurtosis falls on "
            f"{100 * p['kurtosis_falls']:.0f}% of edges (paper: nearly all)")
