"""One accumulator per quantity that recovery takes from the weights, fed layer by layer by one streaming pass.

Each accumulator sees every selected layer once, as a `LayerBatch` (the stack of the models still in play), and
keeps what it needs: `GramSums` the l2 / rms / squared distance sums and which models are identical,
`RankFactors` the per-layer LoRA ranks (and what the edge labels need from them), `DirectionStats` the direction
statistic per layer, `CueMoments` the moments and init distances of the direction cues (recovery.cues).
`recovery.weights.analyze_folder` drives them and combines their results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recovery.cues import init_distance, layer_moments, stats_from_moments
from recovery.direction import stack_stat
from recovery.distances import as_matrix, direct_ranks, layer_ranks
from recovery.layers import Layer


@dataclass
class LayerBatch:
    """One layer of the models in play: `y` (len(sub), *shape), `sub` their indices among all n models, `d2` their
    squared l2 distances on this layer (distance layers only)."""
    layer: Layer
    y: np.ndarray
    sub: np.ndarray
    d2: np.ndarray | None = None

    @property
    def ix(self) -> tuple[np.ndarray, np.ndarray]:
        """Index of the (sub, sub) block in an (n, n) matrix."""
        return np.ix_(self.sub, self.sub)


class Accumulator(Protocol):
    """Takes one layer at a time."""

    def update(self, batch: LayerBatch) -> None:
        """Fold one layer into the running quantity."""


class GramSums:
    """Sums over distance layers of l2, rms and squared l2 distances; which pairs are identical (on all layers, and
    on the 2-D layers the edge labels look at)."""

    def __init__(self, n: int):
        self.l2 = np.zeros((n, n))
        self.rms = np.zeros((n, n))
        self.sq = np.zeros((n, n))
        self.same = np.ones((n, n), dtype=bool)
        self.same_2d = np.ones((n, n), dtype=bool)
        self.changed_layers = 0

    def update(self, batch: LayerBatch) -> None:
        """Add the layer's distances (batch.d2 is required)."""
        d2, ix = batch.d2, batch.ix
        self.l2[ix] += np.sqrt(d2)
        self.sq[ix] += d2
        self.rms[ix] += np.sqrt(d2 / batch.y[0].size)
        self.same[ix] &= d2 == 0
        if batch.y.ndim >= 3:
            self.same_2d[ix] &= d2 == 0
        self.changed_layers += bool((d2 > 0).any())


@dataclass
class RankEvidence:
    """Per-layer ranks of every pair, enough to label edges adapter / finetune without reading the weights again.

    `ranks[l]` (n, n): the rank on 2-D layer l, an upper bound where it was pruned (always <= `limits[l]` there),
    or -1 where it was not computed. `same_2d`: pairs identical on every 2-D layer. Indices follow `ids`.
    """
    ids: list[str]
    layers: list[str]
    ranks: list[np.ndarray]
    limits: list[int]
    same_2d: np.ndarray
    low_rank_frac: float = 0.25

    def relation(self, parent: str, child: str) -> str | None:
        """"adapter" | "finetune", or None when a layer's rank of this pair is unknown (-1)."""
        i, j = self.ids.index(parent), self.ids.index(child)
        if self.same_2d[i, j]:
            return "finetune"
        if any(r[i, j] < 0 for r in self.ranks):
            return None
        return "adapter" if all(r[i, j] <= lim for r, lim in zip(self.ranks, self.limits)) else "finetune"


@dataclass
class RankFactors:
    """LoRA ranks per 2-D distance layer (recovery.distances.layer_ranks), with the pruning of the max reduction.

    `metric` "lora_rank" computes every pair (dense pairs by direct SVD); "auto" skips pairs in different low-rank
    groups unless the layer's low-rank share reaches `low_rank_share`. With `reduce` "max", a pair whose factor
    ranks bound its rank by the running maximum of the layers already counted (and by the edge-label limit) is
    not decomposed again (`layer_ranks(prune=...)`): the maximum is exact.
    """
    n: int
    metric: str
    rank_tol: object
    seed: int
    low_rank_share: float
    reduce: str = "max"
    low_rank_frac: float = 0.25
    layers: list[tuple[str, np.ndarray, float]] = field(default_factory=list)   # (name, ranks, low-rank share)
    limits: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {"fast_pairs": 0, "direct_pairs": 0, "skipped_pairs": 0,
                                                 "pruned_pairs": 0, "seconds": 0.0})

    def __post_init__(self) -> None:
        self.running_max = np.zeros((self.n, self.n), dtype=np.int64)

    def counted(self, share: float) -> bool:
        """Whether a layer with this low-rank share enters the rank distance."""
        return self.metric == "lora_rank" or share >= self.low_rank_share

    def update(self, batch: LayerBatch) -> None:
        """Ranks of every pair of the batch on this layer (2-D and wider layers only)."""
        y, sub, ix = batch.y, batch.sub, batch.ix
        if y.ndim < 3 or len(sub) < 2:
            return
        t0 = time.perf_counter()
        ws = np.stack([as_matrix(w) for w in y]) if y.ndim > 3 else y
        limit = int(self.low_rank_frac * min(ws.shape[1:]))
        prune = np.minimum(self.running_max[ix], limit) if self.reduce == "max" else None
        auto = self.metric == "auto"
        res = layer_ranks(ws, self.rank_tol, seed=self.seed, dense="skip" if auto else "direct", d2=batch.d2,
                          prune=prune)
        share = res.low_rank_share if bool((batch.d2 > 0).any()) else 1.0
        skipped = np.argwhere(np.triu(res.ranks < 0, 1))
        if len(skipped) and share >= self.low_rank_share:
            res.ranks[res.ranks < 0] = 0
            res.ranks += direct_ranks(ws, res.tol, [tuple(p) for p in skipped])
            self.stats["direct_pairs"] += len(skipped)
        elif len(skipped):
            self.stats["skipped_pairs"] += len(skipped)
        full = np.full((self.n, self.n), -1, dtype=np.int64)
        full[ix] = res.ranks
        if self.counted(share):
            self.running_max[ix] = np.maximum(self.running_max[ix], res.ranks)
        self.layers.append((batch.layer.name, full, share))
        self.limits.append(limit)
        self.stats["fast_pairs"] += res.n_fast
        self.stats["direct_pairs"] += res.n_direct
        self.stats["pruned_pairs"] += res.n_pruned
        self.stats["seconds"] += time.perf_counter() - t0

    def evidence(self, keep: list[int], ids: list[str], same_2d: np.ndarray) -> RankEvidence:
        """What edge labels need, for the kept models."""
        kx = np.ix_(keep, keep)
        return RankEvidence(ids, [nm for nm, _, _ in self.layers], [r[kx] for _, r, _ in self.layers],
                            list(self.limits), same_2d[kx], self.low_rank_frac)


class CueMoments:
    """Central moments (m2, m3, m4) and the distance to a fresh init per direction layer (recovery.cues)."""

    def __init__(self, n: int, n_layers: int, seed: int):
        self.moments = np.full((n, n_layers, 3), np.nan)
        self.init_d = np.full((n, n_layers), np.nan)
        self.seed = seed
        self.last: dict[str, np.ndarray] = {}

    def update(self, batch: LayerBatch, k: int) -> None:
        """Moments and init distance of direction layer k; `last` holds the statistics they give."""
        self.moments[batch.sub, k] = layer_moments(batch.y)
        self.init_d[batch.sub, k] = init_distance(batch.y, batch.layer.name, self.seed)
        self.last = stats_from_moments(self.moments[batch.sub, k])

    def cues(self, keep: list[int], good: np.ndarray) -> dict[str, np.ndarray]:
        """cue -> (kept models, good layers)."""
        return {**stats_from_moments(self.moments[keep][:, good]), "init_distance": self.init_d[keep][:, good]}


class DirectionStats:
    """The direction statistic of every model on every direction layer (NaN where undefined or not computed)."""

    def __init__(self, n: int, layers: list[Layer], stat: str, cues: CueMoments | None = None):
        self.values = np.full((n, len(layers)), np.nan)
        self.index = {layer.name: k for k, layer in enumerate(layers)}
        self.stat = stat
        self.cue_moments = cues

    def update(self, batch: LayerBatch) -> None:
        """One direction layer (one moment pass gives the cues and, for kurtosis / variance, the statistic)."""
        k = self.index[batch.layer.name]
        if self.cue_moments is not None:
            self.cue_moments.update(batch, k)
            if self.stat in self.cue_moments.last:
                self.values[batch.sub, k] = self.cue_moments.last[self.stat]
                return
        self.values[batch.sub, k] = stack_stat(batch.y, self.stat)
