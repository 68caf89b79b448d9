"""One accumulator per quantity that recovery takes from the weights, fed layer by layer by one streaming pass.

Each accumulator sees every selected layer once, as a `LayerBatch` (the stack of the models still in play), and
keeps what it needs: `GramSums` the l2 / rms / squared distance sums and which models are identical,
`RankFactors` the per-layer LoRA ranks (and what the edge labels need from them), `FinetuneCertificates` (metric
l2 / rms, where no ranks are computed) small submatrices that prove most full fine-tuning edges without a second
read, `DirectionStats` the direction statistic per layer, `CueMoments` the moments and init distances of the
direction cues (recovery.cues). `recovery.weights.analyze_folder` drives them and combines their results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recovery.cues import init_distance, layer_moments, stats_from_moments
from recovery.direction import stack_stat
from recovery.distances import EPS32, as_matrix, direct_ranks, layer_ranks, spectral_norm
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
    kernel: object = None   # recovery.kernels.Kernel: where the factorizations run (None: numpy)
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
                          prune=prune, kernel=self.kernel)
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


@dataclass
class SketchEvidence:
    """Edge labels from `FinetuneCertificates` (metric l2 / rms): "finetune" where a certificate proves it, None
    (read that edge again) otherwise. Same interface as `RankEvidence`."""
    ids: list[str]
    layers: list[dict]
    same_2d: np.ndarray
    low_rank_frac: float = 0.25

    def relation(self, parent: str, child: str) -> str | None:
        """"finetune" when the pair is identical on the 2-D layers or certified full rank on a kept layer."""
        i, j = self.ids.index(parent), self.ids.index(child)
        if self.same_2d[i, j]:
            return "finetune"
        return "finetune" if any(certified(lay, i, j) for lay in self.layers) else None


def certified(lay: dict, i: int, j: int) -> bool:
    """Whether sigma_{limit+1}(W_i[R, C] - W_j[R, C]) > T proves rank(W_i - W_j) > limit (FinetuneCertificates)."""
    pos = lay["pos"]
    if i not in pos or j not in pos:
        return False
    a, b = pos[i], pos[j]
    d = lay["sub"][a].astype(np.float64) - lay["sub"][b]
    sv = np.linalg.svd(d, compute_uv=False)
    limit = lay["limit"]
    if len(sv) <= limit:
        return False
    if lay["tol"] is not None:
        t = lay["tol"]
    else:   # S >= ||W||_2 of both: ||W_ref||_2 + ||W - W_ref||_F; T covers the weight and delta tolerances
        s_max = max(lay["norm_bound"][a], lay["norm_bound"][b])
        t = EPS32 * lay["maxdim"] * (s_max + np.sqrt(lay["d2"][a, b]))
    t = 1.25 * t + 64 * EPS32 * float(sv[0])   # slack for the interlacing bound's own round-off
    return bool(sv[limit] > t)


class FinetuneCertificates:
    """Proof that a pair differs by more than a low-rank matrix, kept from the single pass (metric l2 / rms, where no
    ranks are computed), so that edge labels (`edge_relations`) need no second read of full fine-tuning edges.

    On the first `max_layers` 2-D distance layers, each model's s x s submatrix on seeded random rows R and columns C
    is kept (s = min(2 (limit + 1), m, d), limit = low_rank_frac x min(m, d): KBs per model). A submatrix's
    singular values never exceed the matrix's (interlacing), so sigma_{limit+1}(D[R, C]) > T proves
    rank(D, tol) > limit for every tol <= T, i.e. the edge is "finetune". T bounds the tolerance the direct path
    uses: the explicit rank_tol, or eps32 x max(m, d) x (S + ||D||_F) with S >= ||W_i||_2, ||W_j||_2 taken as
    ||W_ref||_2 + ||W - W_ref||_F from the nearest of up to `max_refs` reference models (exact spectral norms),
    which covers "weight" (spectral norms of the pair plus the fine-tuning change) and "delta" (||D||_2).
    Pairs it cannot prove (low-rank edges, say) are read again by `edge_relations`.
    """

    def __init__(self, n: int, rank_tol: object, seed: int, low_rank_frac: float = 0.25, max_layers: int = 2,
                 max_refs: int = 4):
        self.n, self.seed, self.low_rank_frac = n, seed, low_rank_frac
        self.tol = float(rank_tol) if not isinstance(rank_tol, str) else None
        self.max_layers, self.max_refs = max_layers, max_refs
        self.layers: list[dict] = []

    def update(self, batch: LayerBatch) -> None:
        """Keep this layer's submatrices when it is one of the first `max_layers` 2-D layers."""
        y, sub = batch.y, batch.sub
        if y.ndim < 3 or len(self.layers) >= self.max_layers or len(sub) < 2:
            return
        m, d = as_matrix(y[0]).shape
        limit = int(self.low_rank_frac * min(m, d))
        s = min(2 * (limit + 1), m, d)
        if s <= limit:
            return
        rng = np.random.default_rng([self.seed, len(self.layers)])
        rows, cols = np.sort(rng.choice(m, s, replace=False)), np.sort(rng.choice(d, s, replace=False))
        subm = np.stack([as_matrix(w)[np.ix_(rows, cols)] for w in y])
        self.layers.append({"name": batch.layer.name, "pos": {int(i): k for k, i in enumerate(sub)}, "sub": subm,
                            "limit": limit, "maxdim": max(m, d), "tol": self.tol, "d2": batch.d2.copy(),
                            "norm_bound": None if self.tol is not None else self._norm_bounds(y, batch.d2)})

    def _norm_bounds(self, y: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Upper bounds of ||W_i||_2: ||W_r||_2 + ||W_i - W_r||_F for the best of up to max_refs references
        (each new reference the model whose bound is loosest, while it is over twice its reference's norm)."""
        refs: dict[int, float] = {0: spectral_norm(as_matrix(y[0]))}
        while True:
            bound = np.min([v + np.sqrt(d2[:, r]) for r, v in refs.items()], axis=0)
            worst = int(np.argmax(bound - min(refs.values())))
            if len(refs) >= self.max_refs or worst in refs or bound[worst] <= 2 * min(refs.values()):
                return bound
            refs[worst] = spectral_norm(as_matrix(y[worst]))

    def evidence(self, keep: list[int], ids: list[str], same_2d: np.ndarray) -> SketchEvidence:
        """What edge labels can prove, for the kept models (every array re-indexed by position in `keep`)."""
        layers = []
        for lay in self.layers:
            present = [k for k, i in enumerate(keep) if i in lay["pos"]]
            loc = np.array([lay["pos"][keep[k]] for k in present], dtype=np.int64)
            sub = np.zeros((len(keep),) + lay["sub"].shape[1:], dtype=lay["sub"].dtype)
            sub[present] = lay["sub"][loc]
            d2 = np.full((len(keep), len(keep)), np.inf)
            d2[np.ix_(present, present)] = lay["d2"][np.ix_(loc, loc)]
            nb = None
            if lay["norm_bound"] is not None:
                nb = np.full(len(keep), np.inf)
                nb[present] = lay["norm_bound"][loc]
            layers.append({**lay, "pos": {k: k for k in present}, "sub": sub, "d2": d2, "norm_bound": nb})
        return SketchEvidence(ids, layers, same_2d[np.ix_(keep, keep)], self.low_rank_frac)


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
