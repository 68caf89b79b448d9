"""Draw a recovered forest (tree.json) as layered trees; with metrics, mark right, wrong and missed edges.

A small tidy layout: leaves take consecutive x slots, a parent sits above the middle of its children, depth is
the row. Trees stand side by side in cluster order. Rendering only: everything drawn comes from the tree dict
and the metrics dict (its `edge_status` lists), so a saved run can be re-plotted without recomputing.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from common.io import atomic_write

COLORS = {"recovered": "#444444", "correct": "#2e7d32", "wrong": "#c62828", "missed": "#ef6c00"}


def layout(nodes: list[str], edges: list[tuple[str, str]], clusters: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(x, y) per node: one layered tree per cluster, trees left to right, y = -depth."""
    children: dict[str, list[str]] = {n: [] for n in nodes}
    has_parent = set()
    for p, c in edges:
        children[p].append(c)
        has_parent.add(c)
    pos: dict[str, tuple[float, float]] = {}
    next_x = 0.0

    def place(root: str) -> None:  # iterative post-order, so deep chains do not hit the recursion limit
        nonlocal next_x
        stack = [(root, 0, False)]
        while stack:
            node, depth, expanded = stack.pop()
            kids = sorted(children[node])
            if kids and not expanded:
                stack.append((node, depth, True))
                stack.extend((k, depth + 1, False) for k in reversed(kids))
                continue
            if kids:
                x = (pos[kids[0]][0] + pos[kids[-1]][0]) / 2
            else:
                x, next_x = next_x, next_x + 1.0
            pos[node] = (x, -float(depth))

    for cluster in sorted(set(clusters.values())):
        for root in sorted(n for n in nodes if clusters[n] == cluster and n not in has_parent):
            place(root)
        next_x += 0.75  # gap between trees
    for n in nodes:  # nodes on a cycle (never in a valid tree.json) still get a spot
        if n not in pos:
            pos[n], next_x = (next_x, 0.0), next_x + 1.0
    return pos


def plot_tree(tree: dict, path: str | Path, metrics: dict | None = None, title: str | None = None) -> Path:
    """Render `tree` (the tree.json dict) to a PNG at `path`; `metrics` (metrics.json dict) adds edge status."""
    nodes = [n["id"] for n in tree["nodes"]]
    clusters = {n["id"]: int(n.get("cluster", 0)) for n in tree["nodes"]}
    edges = [(e["parent"], e["child"]) for e in tree["edges"]]
    pos = layout(nodes, edges, clusters)
    status = (metrics or {}).get("edge_status")
    correct = {tuple(e) for e in status["correct"]} if status else set()
    missed = [tuple(e) for e in status["missed"] if e[0] in pos and e[1] in pos] if status else []

    xs = [x for x, _ in pos.values()]
    depth = -min(y for _, y in pos.values())
    width = min(max(6.0, 0.55 * (max(xs) - min(xs) + 2)), 60.0)
    height = min(max(3.5, 1.6 * (depth + 1) + 1.5), 30.0)
    fig = Figure(figsize=(width, height), dpi=110)
    ax = fig.add_subplot()
    font = 8 if len(nodes) <= 40 else 6
    rotate = 40 if len(nodes) > 12 else 0

    def arrow(p: str, c: str, color: str, style: str, rad: float = 0.0) -> None:
        ax.annotate("", xy=pos[c], xytext=pos[p], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, linestyle=style, shrinkA=7, shrinkB=7,
                                    connectionstyle=f"arc3,rad={rad}"))

    for p, c in edges:
        color = COLORS["recovered"] if status is None else COLORS["correct" if (p, c) in correct else "wrong"]
        arrow(p, c, color, "-")
    for p, c in missed:
        arrow(p, c, COLORS["missed"], "--", rad=0.25)
    ax.scatter(xs, [y for _, y in pos.values()], s=60, c="white", edgecolors="#222222", zorder=2)
    parents = {p for p, _ in edges}
    for node, (x, y) in pos.items():
        label = node if len(node) <= 28 else node[:12] + "..." + node[-13:]
        if node in parents:  # inner node: label beside it, clear of the edges below
            ax.text(x + 0.14, y, label, fontsize=font, ha="left", va="center", zorder=3,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
        else:
            ax.text(x, y - 0.12, label, fontsize=font, rotation=rotate, ha="right" if rotate else "center",
                    va="top", rotation_mode="anchor", zorder=3)

    handles = [Line2D([], [], color=COLORS["recovered"], label="recovered edge")] if status is None else [
        Line2D([], [], color=COLORS["correct"], label="recovered, correct"),
        Line2D([], [], color=COLORS["wrong"], label="recovered, wrong"),
        Line2D([], [], color=COLORS["missed"], linestyle="--", label="missed (ground truth)")]
    ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    ax.set_title(title or _title(tree, metrics), fontsize=10)
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(-depth - 0.9, 0.5)
    ax.axis("off")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _title(tree: dict, metrics: dict | None) -> str:
    n_trees = len({n.get("cluster", 0) for n in tree["nodes"]})
    text = f"{len(tree['nodes'])} models, {n_trees} recovered trees"
    if metrics and metrics.get("edge_accuracy") is not None:
        text += f"; edge accuracy {metrics['edge_accuracy']:.3f}"
    return text
