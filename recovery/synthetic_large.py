"""Large synthetic model forests (one weight matrix per model), in memory, for the sparse recovery at 100k models.

Like recovery/synthetic.py (not evidence for the paper's claims): roots are heavy-tailed random matrices (Student
t); a fine-tune adds a dense Gaussian delta and shrinks the largest values a little, so kurtosis falls from parent
to child. Trees have realistic sizes and depths: sizes drawn in `tree_sizes`, each new model fine-tuned from an
earlier model of its tree less than `max_depth` deep (a random recursive tree, capped). Models are returned in a
seeded random order (as file names would mix trees). `write_folder` writes a forest as a model folder with its
graph.json, for the file path of `recover`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.io import write_json

LAYER = "layers.0.weight"


@dataclass
class Forest:
    """Models as rows of `x` (n, rows*cols) float32, with the true parent (-1: root), tree and depth of each."""
    x: np.ndarray
    parent: np.ndarray
    tree: np.ndarray
    depth: np.ndarray
    shape: tuple[int, int]

    @property
    def ids(self) -> list[str]:
        """Model ids (zero-padded row numbers)."""
        width = len(str(len(self.parent)))
        return [f"m{i:0{width}d}" for i in range(len(self.parent))]


def tree_shapes(n: int, sizes: tuple[int, int], max_depth: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parent (local creation order), tree id and depth of n models grouped into trees of sizes in `sizes`."""
    parent, tree, depth = [], [], []
    start, t = 0, 0
    while start < n:
        size = min(int(rng.integers(sizes[0], sizes[1] + 1)), n - start)
        local_depth = [0]
        eligible = [0]                   # models of this tree less than max_depth deep
        parent.append(-1)
        for v in range(1, size):
            p = eligible[int(rng.integers(len(eligible)))]
            local_depth.append(local_depth[p] + 1)
            parent.append(start + p)
            if local_depth[v] < max_depth:
                eligible.append(v)
        tree += [t] * size
        depth += local_depth
        start, t = start + size, t + 1
    return np.array(parent), np.array(tree), np.array(depth)


def large_forest(n: int, *, tree_sizes: tuple[int, int] = (20, 500), max_depth: int = 5,
                 shape: tuple[int, int] = (64, 64), noise: float = 0.1, shrink: float = 0.002,
                 seed: int = 0) -> Forest:
    """A forest of n models with one `shape` matrix each (see the module docstring).

    Args:
        noise: std of a fine-tune's Gaussian delta, relative to the parent's weight std.
        shrink: fraction by which values beyond 2 std shrink at each fine-tune.
    """
    if n < 1 or tree_sizes[0] < 1 or tree_sizes[1] < tree_sizes[0] or max_depth < 1:
        raise ValueError(f"bad forest size: n={n}, tree_sizes={tree_sizes}, max_depth={max_depth}")
    rng = np.random.default_rng(seed)
    parent, tree, depth = tree_shapes(n, tree_sizes, max_depth, rng)
    p = shape[0] * shape[1]
    x = np.empty((n, p), dtype=np.float32)
    for v in range(n):
        if parent[v] < 0:
            x[v] = 0.02 * rng.standard_t(5, size=p)
            continue
        w = x[parent[v]]
        sd = w.std()
        big = np.abs(w - w.mean()) > 2 * sd
        x[v] = w - np.float32(shrink) * w * big + np.float32(noise * sd) * rng.standard_normal(p, dtype=np.float32)
    perm = rng.permutation(n)          # new position of each created model
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    out = np.empty_like(x)
    out[perm] = x
    new_parent = np.full(n, -1)
    new_parent[perm] = np.where(parent >= 0, perm[np.maximum(parent, 0)], -1)
    new_tree, new_depth = np.empty_like(tree), np.empty_like(depth)
    new_tree[perm], new_depth[perm] = tree, depth
    return Forest(out, new_parent, new_tree, new_depth, tuple(shape))


def edge_accuracy(parent_true: np.ndarray, parent_pred: np.ndarray) -> float:
    """The paper's edge accuracy: share of true edges (parent -> child) recovered with the same parent."""
    child = np.flatnonzero(parent_true >= 0)
    return float((parent_pred[child] == parent_true[child]).mean()) if len(child) else 1.0


def write_folder(forest: Forest, folder: str | Path) -> Path:
    """Write the forest as `models/<id>.safetensors` (tensor `layers.0.weight`) + graph.json; returns folder."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    ids = forest.ids
    for i, mid in enumerate(ids):
        save_file({LAYER: forest.x[i].reshape(forest.shape)}, str(folder / "models" / f"{mid}.safetensors"))
    edges = [[ids[p], ids[c]] for c, p in enumerate(forest.parent) if p >= 0]
    write_json(folder / "graph.json", {"nodes": ids, "edges": edges, "stage": {i: "specialization" for i in ids},
                                       "meta": {}})
    return folder
