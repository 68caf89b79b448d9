"""Direction cues beyond the paper's summed kurtosis: per-layer votes and distance to a fresh random init.

A cue turns per-layer values of every model into a pairwise vote matrix V (n, n) in [-1, 1]: V[i, j] > 0 says
"i is an ancestor of j". Two families:

  stage cue (flips with the training stage): kurtosis. In specialization (fine-tuning) it falls from parent to
      child (paper Sec. 4.2); in generalization it rises.
  stage-free cues: init_distance, variance. Every trained model descends from a random initialisation, and
      training moves it away from there, in pretraining and fine-tuning alike: the descendant is the one farther
      from a fresh random init of the same shapes. W0 is independent of every model, so ||W - W0||^2 ~ ||W||^2 +
      ||W0||^2: in effect the cue compares weight norms, with the init scale fixed per layer (std 1/sqrt(fan_in)).
      variance is the centred version (the descendant has the larger per-layer variance). Training with strong
      weight decay can shrink weights and break both; the ablation measures how often they hold.
  centrality (family geometry, stage-free): a parent lies near the centre of its descendants. With independent
      changes, squared distances add along the tree, so S(x) = sum_v ||x - v||^2 over the tree's models falls
      toward the tree's weighted median: S(c) - S(p) = ||p - c||^2 (n - 2 |subtree(c)|) for an edge p -> c. The
      ancestor is the more central model whenever the child's subtree holds less than half the tree -- true of
      every edge of a bushy family rooted at its base model, false along a chain (pretraining checkpoints). It is
      one value per model (not per layer), computed within each tree (`centrality`).

`sum` reduces a cue like the paper (sign of the difference of the layer sums); `votes` lets each layer vote
(mean of the per-layer signs), so one heavy-tailed layer cannot decide alone.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from common.seed import derive_seed
from recovery.direction import central_moments

STAGE_CUES = ("kurtosis",)
FREE_CUES = ("init_distance", "variance", "centrality")
CUES = STAGE_CUES + FREE_CUES
REDUCE = ("sum", "votes")


def layer_moments(y: np.ndarray) -> np.ndarray:
    """Central moments (m2, m3, m4) in float64 of each model's tensor in a stack (n, ...) -> (n, 3)."""
    return np.array([central_moments(np.asarray(v).ravel()) for v in y])


def stats_from_moments(m: np.ndarray) -> dict[str, np.ndarray]:
    """kurtosis and variance from (..., 3) central moments; kurtosis is NaN where the tensor is constant."""
    m2, m4 = m[..., 0], m[..., 2]
    pos = m2 > 0
    return {"variance": m2, "kurtosis": np.where(pos, m4 / np.where(pos, m2, 1) ** 2, np.nan)}


def init_distance(y: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """||W - W0||_F of each model in a stack (n, ...) to one seeded fresh init W0 ~ N(0, 1/fan_in) -> (n,)."""
    fan_in = int(np.prod(y.shape[2:])) if y.ndim > 2 else y.shape[-1]
    rng = np.random.default_rng(derive_seed(seed, "init_distance", name))
    w0 = rng.standard_normal(y.shape[1:], dtype=np.float32) * np.float32(1.0 / np.sqrt(max(fan_in, 1)))
    flat, w0 = y.reshape(len(y), -1), w0.ravel()
    sq = np.einsum("ij,ij->i", flat, flat, dtype=np.float64) - 2.0 * (flat @ w0).astype(np.float64)
    return np.sqrt(np.maximum(sq + float(w0 @ w0), 0.0))


def centrality(sq: np.ndarray) -> np.ndarray:
    """S(x) = sum of squared distances from each model to the others (n, n) -> (n, 1): lower is more central."""
    return np.asarray(sq, dtype=np.float64).sum(axis=1, keepdims=True)


def pair_votes(values: np.ndarray, reduce: str = "votes") -> np.ndarray:
    """V[i, j] in [-1, 1]: how strongly the values say i's is higher than j's (per-layer values (n, L))."""
    if reduce not in REDUCE:
        raise ValueError(f"cue reduce must be one of {REDUCE}, got {reduce!r}")
    v = np.asarray(values, dtype=np.float64)
    if reduce == "sum":
        s = v.sum(axis=1)
        return np.sign(s[:, None] - s[None, :])
    return np.sign(v[:, None, :] - v[None, :, :]).mean(axis=2)


def cue_matrices(per_layer: Mapping[str, np.ndarray], weights: Mapping[str, float], reduce: str = "votes"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Combined vote matrices (stage, free): V[i, j] > 0 means i is an ancestor of j (specialization sign).

    Args:
        per_layer: cue name -> (n, L) per-layer values (see CUES).
        weights: cue name -> weight in the combination (0 or missing: unused).
        reduce: "votes" (mean of per-layer signs) or "sum" (sign of the summed values, the paper's kurtosis).

    Returns:
        (V_stage, V_free): multiply V_stage by -1 for a generalization subtree; V_free needs no stage.
    """
    unknown = sorted(set(weights) - set(CUES))
    if unknown:
        raise ValueError(f"unknown direction cue(s) {unknown}; known: {list(CUES)}")
    n = len(next(iter(per_layer.values())))
    v_stage, v_free = np.zeros((n, n)), np.zeros((n, n))
    for name, w in weights.items():
        if not w:
            continue
        votes = pair_votes(per_layer[name], reduce)
        if name in STAGE_CUES:
            v_stage += w * votes                 # specialization: the ancestor has the higher statistic
        else:
            v_free -= w * votes                  # the ancestor is the one nearer to the init
    return v_stage, v_free
