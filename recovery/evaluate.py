"""Score a recovered forest against a ground-truth graph JSON (`{"nodes": [...], "edges": [[parent, child]]}`).

Edge accuracy is the paper's metric: the fraction of ground-truth edges recovered with the right placement and
direction. Trees are the ground truth's connected components, named by their roots. Clustering accuracy matches
predicted clusters to true trees one-to-one (Hungarian) and counts the models that land in their matched tree.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from common.errors import InputError
from common.io import read_json


class GraphError(InputError):
    """A ground-truth graph file that cannot be used; the message names the file and the problem."""


@dataclass
class Graph:
    """A directed forest: node ids and (parent, child) edges."""
    nodes: list[str]
    edges: list[tuple[str, str]]
    source: str = "ground truth"

    def roots(self) -> dict[str, str]:
        """Map each node to the root of its tree."""
        parent = dict((c, p) for p, c in self.edges)
        out: dict[str, str] = {}
        for node in self.nodes:
            x = node
            while x in parent:
                x = parent[x]
            out[node] = x
        return out


def load_graph(path: str | Path) -> Graph:
    """Read and check a graph JSON: data_gen's graph.json, or a tree.json (edges as {"parent", "child"} dicts).

    Raises:
        GraphError: naming the file, when it is missing, the schema is wrong or the edges do not form a forest.
    """
    try:
        data = read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise GraphError(f"ground truth: {e}") from None
    return parse_graph(data, source=str(path))


def parse_graph(data: dict, source: str = "ground truth") -> Graph:
    """Build a Graph from already-loaded JSON, checking it is a forest over its node list."""
    if not isinstance(data, dict) or "nodes" not in data or "edges" not in data:
        raise GraphError(f"{source}: expected a JSON object with 'nodes' and 'edges'")
    nodes = [n["id"] if isinstance(n, dict) else n for n in data["nodes"]]
    if not all(isinstance(n, str) for n in nodes):
        raise GraphError(f"{source}: 'nodes' must be id strings (or objects with an 'id')")
    if len(set(nodes)) != len(nodes):
        dup = sorted({n for n in nodes if nodes.count(n) > 1})
        raise GraphError(f"{source}: duplicate node ids {dup[:5]}")
    edges = []
    for e in data["edges"]:
        pair = (e.get("parent"), e.get("child")) if isinstance(e, dict) else tuple(e)
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise GraphError(f"{source}: bad edge {e!r}; expected [parent, child]")
        edges.append(pair)
    known = set(nodes)
    unknown = sorted({x for e in edges for x in e} - known)
    if unknown:
        raise GraphError(f"{source}: edges name ids missing from 'nodes': {unknown[:5]}")
    counts = Counter(c for _, c in edges)     # linear: graphs of 100k models
    twice = sorted(c for c, k in counts.items() if k > 1)
    if twice:
        raise GraphError(f"{source}: not a forest, nodes with more than one parent: {twice[:5]}")
    graph = Graph(nodes, edges, source)
    parent = dict((c, p) for p, c in edges)
    for node in nodes:
        seen, x = set(), node
        while x in parent:
            if x in seen:
                raise GraphError(f"{source}: edges form a cycle through {x!r}")
            seen.add(x)
            x = parent[x]
    return graph


def evaluate(ids: list[str], edges: list[tuple[str, str]], clusters: list[int],
             truth: Graph) -> tuple[dict, list[str]]:
    """Compare recovered edges and clusters with the ground truth.

    Args:
        ids: recovered model ids.
        edges: recovered (parent, child) edges.
        clusters: cluster label per id.
        truth: the ground-truth forest.

    Returns:
        (metrics, warnings). Ground-truth ids absent from `ids` are warned about and their edges count as missed
        (the score stays over all ground-truth edges); ids absent from the ground truth are warned about.

    Raises:
        GraphError: when no id is shared, which means the wrong ground truth file or folder.
    """
    present, known = set(ids), set(truth.nodes)
    missing = sorted(known - present)
    extra = sorted(present - known)
    if not present & known:
        raise GraphError(f"{truth.source}: none of its {len(known)} node ids appear among the {len(present)} "
                         f"recovered models (e.g. {sorted(known)[:3]} vs {sorted(present)[:3]}); "
                         "wrong ground-truth file for this input?")
    warnings = []
    if missing:
        lost = sum(1 for p, c in truth.edges if p in missing or c in missing)
        warnings.append(f"{truth.source}: {len(missing)} ground-truth ids are not among the recovered models "
                        f"(missing from the input or excluded): {missing[:10]}; their {lost} edges count as missed")
    if extra:
        warnings.append(f"{truth.source}: {len(extra)} recovered models are not in the ground truth: "
                        f"{extra[:10]}; they are ignored for clustering accuracy")

    true_set, pred_set = set(truth.edges), set(map(tuple, edges))
    correct = true_set & pred_set
    reversed_ = {(p, c) for p, c in true_set - pred_set if (c, p) in pred_set}
    n_true = len(true_set)
    root_of = truth.roots()
    per_tree: dict[str, dict] = {}
    for root in sorted(set(root_of.values())):
        tree_edges = [e for e in true_set if root_of[e[1]] == root]
        n_ok = sum(e in correct for e in tree_edges)
        per_tree[root] = {"n_nodes": sum(r == root for r in root_of.values()), "n_edges": len(tree_edges),
                          "n_correct": n_ok, "accuracy": n_ok / len(tree_edges) if tree_edges else None}
    pred_children = {c for _, c in pred_set}
    true_roots = [r for r in per_tree if r in present]
    metrics = {
        "edge_accuracy": len(correct) / n_true if n_true else None,
        "undirected_accuracy": (len(correct) + len(reversed_)) / n_true if n_true else None,
        "n_edges_true": n_true, "n_edges_correct": len(correct), "n_edges_reversed": len(reversed_),
        "root_accuracy": (sum(r not in pred_children for r in true_roots) / len(true_roots)
                          if true_roots else None),
        "per_tree": per_tree,
        **clustering_accuracy(ids, clusters, root_of),
        "missing_from_input": missing, "not_in_ground_truth": extra,
        "edge_status": {"correct": sorted(map(list, correct)), "wrong": sorted(map(list, pred_set - true_set)),
                        "missed": sorted(map(list, true_set - pred_set)), "reversed": sorted(map(list, reversed_))},
    }
    return metrics, warnings


def clustering_accuracy(ids: list[str], clusters: list[int], root_of: dict[str, str]) -> dict:
    """Best one-to-one matching of predicted clusters to true trees, over ids known to both."""
    common = [(i, c) for i, c in zip(ids, clusters) if i in root_of]
    trees = {t: k for k, t in enumerate(sorted({root_of[i] for i, _ in common}))}
    labels = {c: k for k, c in enumerate(sorted({c for _, c in common}))}
    confusion = np.zeros((len(trees), len(labels)), dtype=int)
    for i, c in common:
        confusion[trees[root_of[i]], labels[c]] += 1
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    matched = int(confusion[rows, cols].sum())
    return {"clustering_accuracy": matched / len(common), "n_trees_true": len(set(root_of.values())),
            "n_trees_pred": len(set(clusters))}
