"""Direction ties: models the direction layers cannot tell apart, ordered by the layers where they differ.

The paper reads its direction score (Eq. 3) on the dense layers of fully fine-tuned models and on the LoRA-tuned
layers of LoRA models. Read on layers a fine-tune left untouched, the score says nothing: a LoRA child of a model
(LoRA on the attention, the paper's recipe) is bit-identical to it on every dense layer, so in a folder that mixes
full and LoRA fine-tunes (or a LoRA folder read with the default `dense` kinds) parent and child have equal scores,
and the edge's direction would follow the order of the files (their names) instead of the weights.

`tie_groups` finds such models: equal statistics on every direction layer. `recovery.weights` then reads the
direction statistic (and the cues) of just those models on the other selected layers, where they do differ
(`recovery.direction.ties=other_layers`, the default; `none` leaves them tied, as the paper's method would).
Only pairs within one group use those values, after the direction score as a second key: no other pair's
comparison changes, so folders without ties recover exactly as before. (The nearest-neighbour path for very large
folders, recovery.sparse, keeps the plain comparison.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIES = ("other_layers", "none")


def tie_groups(values: np.ndarray) -> np.ndarray:
    """Group label of each model (row of per-layer direction values (n, L)): models whose values are equal on every
    layer share a label >= 0; a model equal to no other gets -1."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2 or v.shape[1] == 0:
        return np.full(len(v), -1)
    return _shared_labels(np.unique(v, axis=0, return_inverse=True)[1].reshape(-1))


def _shared_labels(classes: np.ndarray) -> np.ndarray:
    """Classes held by two or more entries, numbered 0, 1, ... by first appearance; -1 for the others."""
    counts = np.bincount(classes) if len(classes) else np.zeros(0, dtype=int)
    labels = np.full(len(classes), -1)
    order: dict[int, int] = {}
    for i in np.flatnonzero(counts[classes] > 1):
        labels[i] = order.setdefault(int(classes[i]), len(order))
    return labels


@dataclass
class TieBreak:
    """The second direction key of tied models: their statistic (and cues) per layer on `layers`.

    Attributes:
        groups: (n,) tie group of each model, -1 outside every group.
        layers: the layers the values were read on (selected layers outside the direction layers).
        per_layer: cue / statistic name -> (n, len(layers)) values; NaN rows outside the groups.
        stat: the direction statistic (its per-layer values sum to `score`).
    """
    groups: np.ndarray
    layers: list[str]
    per_layer: dict[str, np.ndarray]
    stat: str

    @property
    def score(self) -> np.ndarray:
        """(n,) the direction statistic summed over `layers` (NaN outside the groups)."""
        return self.per_layer[self.stat].sum(axis=1)

    def same(self) -> np.ndarray:
        """(n, n) bool: both models in one group (diagonal included)."""
        g = self.groups
        return (g[:, None] == g[None, :]) & (g[:, None] >= 0)

    def subset(self, idx) -> "TieBreak":
        """The same for the models `idx` (groups renumbered; a model left alone in its group leaves it)."""
        idx = np.asarray(idx, dtype=np.int64)
        g = self.groups[idx]
        groups = np.full(len(idx), -1)
        inside = g >= 0
        groups[inside] = _shared_labels(np.unique(g[inside], return_inverse=True)[1].reshape(-1))
        return TieBreak(groups, list(self.layers), {k: v[idx] for k, v in self.per_layer.items()}, self.stat)

    def members(self, ids: list[str]) -> list[list[str]]:
        """The groups as lists of model ids."""
        return group_members(self.groups, ids)


def group_members(groups: np.ndarray, ids: list[str]) -> list[list[str]]:
    """Tie groups (labels from `tie_groups`) as lists of model ids, in label order."""
    return [[ids[i] for i in np.flatnonzero(groups == g)] for g in range(int(groups.max(initial=-1)) + 1)]


def ties_record(ties: TieBreak | None, ids: list[str]) -> dict:
    """tree.json's `direction_ties`: the groups (ids) and the layers that order them; empty lists when none."""
    return {"groups": [] if ties is None else ties.members(ids), "layers": [] if ties is None else list(ties.layers)}


def less_with_ties(score: np.ndarray, ties: TieBreak | None) -> np.ndarray:
    """L[i, j] = score_i < score_j, and within a tie group the tie-break scores' order instead."""
    k = np.asarray(score, dtype=np.float64)
    less = k[:, None] < k[None, :]
    if ties is None:
        return less
    f = ties.score
    with np.errstate(invalid="ignore"):
        return np.where(ties.same(), f[:, None] < f[None, :], less)
