"""Pairwise weight distances between n models, one layer at a time.

``l2`` (paper Eq. 1) and ``rms`` come from one centred Gram matrix per layer; ``lora_rank`` (Eq. 2) from the
numerical rank of each pair's difference, computed without n^2 full SVDs where the differences are low rank.

Rank tolerance (``rank_tol``):
  * ``"weight"`` (default): tol = eps32 x max(m, n) x S, with S the largest spectral norm of the layer's weights
    among the models compared (taken as ||W_ref||_2 + max_i ||W_i - W_ref||_2, an upper bound within the size of
    the fine-tuning change, inside a group of models whose differences are low rank; exact ||W_i||_2 otherwise).
    Storing W + BA in float32 leaves rounding noise far below this level, so a tiny LoRA update keeps its rank.
  * ``"delta"``: numpy's default for a float32 difference: sigma_max(D) x max(m, n) x eps32. Here the rounding
    noise itself decides the rank, so no low-rank shortcut is exact: every pair uses the direct SVD.
  * a float: that absolute tolerance.

Fast ranks. Per layer, the models are taken in order of their summed l2 distance to the others (the medoid first:
from it, the differences of a LoRA tree have the lowest ranks). Each model's difference from a reference model,
D_i = W_i - W_ref, is factored once by a randomized range finder: D_i = L_i + R_i with L_i = A_i diag(s_i) V_i^T
(A_i, V_i orthonormal) and the residual bounded by ||R_i||_2 <= ||R_i||_F + (largest discarded singular value)
=: e_i <= tol / 8, all computed explicitly (for the "weight" tolerance, tol / 8 is taken from the lower bound
||W_ref||_2 + ||D_i||_F / sqrt(min(m, n)) of S). Then W_i - W_j = (L_i - L_j) + (R_i - R_j) and by Weyl's
inequality every singular value of the pair's difference is within e_i + e_j of one of the small core matrix of
L_i - L_j (size k_i + k_j; the Gram blocks A_i^T A_j of all pairs come from one product per model, the cores are
decomposed in padded batches). A rank is accepted only when no core singular value lies within that margin (plus
an allowance for the core's Cholesky jitter and float64 round-off) of tol; otherwise, and for pairs whose
differences are not low rank, the direct SVD is used. Hence the ranks equal
``numpy.linalg.matrix_rank(W_i - W_j, tol)`` (difference in float64), which the tests check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recovery.kernels import centred_gram, ops, to_device

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
RANK_TOLS = ("weight", "delta")


# ----------------------------------------------------------------------------------------------- l2 / rms
def _sq_from_gram(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.diag(g)
    scale = d[:, None] + d[None, :]
    return np.maximum(scale - 2 * g, 0.0), scale


def _equal_rows(x: np.ndarray, candidates: np.ndarray) -> list[int]:
    """For each row, the first row equal to it (itself if none), comparing only `candidates[i, j]` pairs against
    one representative per class of equal rows."""
    rep = list(range(x.shape[0]))
    reps: list[int] = []
    for i in range(x.shape[0]):
        for r in reps:
            if candidates[i, r] and np.array_equal(x[i], x[r]):
                rep[i] = r
                break
        else:
            reps.append(i)
    return rep


def pairwise_sq_dists(x: np.ndarray, chunk: int = 1 << 14, rel: float = 1e-4, kernel=None) -> np.ndarray:
    """Squared Euclidean distances between the rows of `x` (n, p), float64, exact zero for identical rows.

    Uses ||a-b||^2 = |a|^2 + |b|^2 - 2 a.b on rows centred on their mean (float64 accumulation, column chunks).
    Pairs whose distance is small next to their norms (cancellation) are recomputed on a Gram matrix centred on
    their own group of close models, so close models far from the mean keep their precision. `kernel`
    (recovery.kernels.Kernel) computes the first Gram matrix (on its device; float32 products on numpy, whose
    pairs closer than kernels.REL32 are then all redone in float64); the recomputations are float64.
    """
    x = x.reshape(x.shape[0], -1)
    if kernel is None:
        first, exact = centred_gram(x, chunk), True
    else:
        first, exact = kernel.gram(x), kernel.exact or x.dtype != np.float32
    gram = (lambda a: centred_gram(a, chunk)) if kernel is None or not kernel.exact else kernel.gram
    if not exact:
        from recovery.kernels import REL32
        rel = max(rel, REL32)
    d2, scale = _sq_from_gram(first)
    close = d2 < rel * scale
    np.fill_diagonal(close, False)
    if close.any():
        from scipy.sparse.csgraph import connected_components

        _, comp = connected_components(close, directed=False)
        for c in np.unique(comp):
            idx = np.flatnonzero(comp == c)
            # one group of all rows is already centred on its own mean, unless the first pass was float32
            if 1 < len(idx) and (len(idx) < x.shape[0] or not exact):
                sub, _ = _sq_from_gram(gram(x[idx]))
                d2[np.ix_(idx, idx)] = sub
    tiny = d2 <= 1e-12 * (scale + np.finfo(np.float64).tiny)
    np.fill_diagonal(tiny, False)
    if tiny.any():   # exact zeros only for identical rows: sort rows into equality classes (<= n comparisons each)
        rep = _equal_rows(x, tiny)
        for i, j in zip(*np.nonzero(np.triu(tiny, 1))):
            d2[i, j] = d2[j, i] = 0.0 if rep[i] == rep[j] else max(d2[i, j], np.finfo(np.float64).tiny)
    np.fill_diagonal(d2, 0.0)
    return d2


# ----------------------------------------------------------------------------------------------- ranks
def as_matrix(w: np.ndarray) -> np.ndarray:
    """A layer's weights as a matrix: conv kernels (out, in, *k) become (out, in * prod(k))."""
    return w.reshape(w.shape[0], -1) if w.ndim > 2 else w


def spectral_norm(w: np.ndarray) -> float:
    """||w||_2 (largest singular value) in float64, as the square root of the top eigenvalue of the smaller Gram
    matrix (relative error ~ eps64, and several times faster than an SVD)."""
    if not w.size:
        return 0.0
    w = np.asarray(w, dtype=np.float64)
    g = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return float(np.sqrt(max(np.linalg.eigvalsh(g)[-1], 0.0)))


def direct_ranks(ws: np.ndarray, tol: np.ndarray | float, pairs=None) -> np.ndarray:
    """The reference method: ``matrix_rank(W_i - W_j, tol)`` per pair, difference in float64. ws: (n, m, d)."""
    n = ws.shape[0]
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (n, n))
    out = np.zeros((n, n), dtype=np.int64)
    for i, j in (pairs if pairs is not None else zip(*np.triu_indices(n, 1))):
        d = ws[i].astype(np.float64) - ws[j]
        out[i, j] = out[j, i] = np.linalg.matrix_rank(d, tol=tol[i, j])
    return out


def delta_tolerances(ws: np.ndarray) -> np.ndarray:
    """numpy's default tolerance for each float32 pair difference: sigma_max x max(m, n) x eps32."""
    n = ws.shape[0]
    tol = np.zeros((n, n))
    for i, j in zip(*np.triu_indices(n, 1)):
        tol[i, j] = tol[j, i] = spectral_norm(ws[i].astype(np.float64) - ws[j]) * max(ws.shape[1:]) * EPS32
    return tol


@dataclass
class LowRank:
    """D ~= A diag(s) V^T with ||D - A diag(s) V^T||_2 <= err."""
    a: np.ndarray
    s: np.ndarray
    v: np.ndarray
    err: float

    @property
    def k(self) -> int:
        return len(self.s)


def factor_low_rank(d: np.ndarray, target: float, kmax: int, rng: np.random.Generator, block: int = 32
                    ) -> LowRank | None:
    """Factor `d` (float64) with certified residual err <= target, or None when its rank exceeds kmax.

    Blocked randomized range finder with a fixed block size (the basis overshoots the rank by < `block`): each
    block sketches D @ Omega (in float32 while the part of D left to capture is far above float32 precision: the
    sketch only steers the basis; in float64 after that), is orthonormalised against the basis in float64, and adds its rows Q_b^T D (float64). The residual's Frobenius norm follows from
    ||D - Q Q^T D||_F^2 = ||D||_F^2 - ||Q^T D||_F^2 (Q orthonormal), plus a bound on its float64 round-off
    (`_identity_allowance`); when that round-off is too large next to the target (a target far below ||D||), the
    residual is computed explicitly instead. Singular values of Q^T D at most target / 2 are dropped and added to
    the bound (`_truncate`).
    """
    xp = ops(d)
    m, n = d.shape
    if not xp.any(d):
        return LowRank(xp.zeros((m, 0), d), np.zeros(0), xp.zeros((n, 0), d), 0.0)
    total = xp.sum_sq(d)
    goal = (target / 2) ** 2
    d32 = xp.f32(d)
    coarse = (256 * EPS32) ** 2 * total   # below this much left to capture, float32 sketches stall
    cap = min(m, n)
    q = xp.zeros((m, 0), d)
    rows = xp.zeros((0, n), d)
    captured = 0.0
    while True:
        b = min(block, cap - q.shape[1])
        if total - captured > coarse:
            y = xp.f64(d32 @ xp.randn(rng, (n, b), True, d))
        else:
            y = d @ xp.randn(rng, (n, b), False, d)
        qb = _new_directions(q, y)
        if not qb.shape[1]:   # the sketch finds nothing beyond the basis: the residual decides
            explicit = xp.fro(d - q @ rows)
            return _truncate(q, rows, target / 2, kmax, explicit) if explicit <= target / 2 else None
        rb = qb.T @ d
        q = xp.cat([q, qb], 1)
        rows = xp.cat([rows, rb], 0)
        captured += xp.sum_sq(rb)
        est = max(total - captured, 0.0)
        slack = _identity_allowance(m, n, q.shape[1]) * total
        res = np.sqrt(est + slack) if est + slack <= goal else None
        if res is None and (est <= max(goal / 2, slack) or q.shape[1] >= cap):   # below what the identity resolves
            explicit = xp.fro(d - q @ rows)
            res = explicit if explicit <= target / 2 else None
        if res is not None:
            return _truncate(q, rows, target / 2, kmax, float(res))
        if q.shape[1] >= min(kmax + block, cap):   # one block past kmax: room to refine a rank-kmax basis
            return None


def _new_directions(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Orthonormal directions of the sketch `y` outside the orthonormal basis `q` (twice projected out); directions
    at round-off level (whose normalisation would bring back components along `q`) are dropped."""
    xp = ops(y)
    scale = xp.fro(y)
    for _ in range(2):
        y -= q @ (q.T @ y)
    u, sv = xp.svd_us(y)
    qb = u[:, sv > 64 * EPS64 * np.sqrt(y.shape[1]) * scale]
    qb -= q @ (q.T @ qb)
    return xp.qr_q(qb) if qb.shape[1] else qb


def _truncate(q: np.ndarray, rows: np.ndarray, floor: float, kmax: int, res: float) -> LowRank | None:
    """LowRank of Q @ rows keeping singular values above `floor`, from the eigenpairs of the small Gram rows rows^T.

    With rows^T U = V diag(s) (V need not be exactly orthonormal: the cores use its Gram matrix), the kept part is
    Q U_k U_k^T rows exactly; the dropped part has spectral norm sqrt(largest dropped eigenvalue), computed to
    within k eps ||rows||^2 (added). None when more than kmax values are kept.
    """
    xp = ops(rows)
    lam, u = xp.eigh_desc(rows @ rows.T)
    slack = 8 * len(lam) * EPS64 * max(float(lam[0]), 0.0)
    keep = lam > floor ** 2 + slack
    if int(keep.sum()) > kmax:
        return None
    sv = xp.sqrt(lam[keep])
    dropped = float(np.sqrt(max(xp.max0(lam[~keep]), 0.0) + slack))
    return LowRank(q @ u[:, keep], xp.host(sv), (rows.T @ u[:, keep]) / sv, res + dropped)


def _sum_squares(x: np.ndarray) -> float:
    """Sum of squares in float64 by numpy's pairwise summation (round-off <~ (128 + log2 N) eps relative)."""
    return float(np.add.reduce(np.square(x, dtype=np.float64).reshape(-1)))


def _identity_allowance(m: int, n: int, k: int) -> float:
    """Bound, relative to ||D||_F^2, on the float64 round-off of ||D||_F^2 - ||Q^T D||_F^2: the two pairwise sums
    ((128 + log2 N) eps each), the products Q^T D (|fl(x) - x| <= gamma_m |Q|^T |D|, at most m sqrt(k) eps
    ||D||_F per unit of ||Q^T D||_F, counted twice for the square) and Q's loss of orthogonality (~k eps), doubled
    for safety."""
    return 2.0 * (2 * m * np.sqrt(k) + 2 * k + 2 * (128 + np.log2(m * n))) * EPS64


@dataclass
class RankResult:
    """Ranks of every pair's difference for one layer, with how they were obtained."""
    ranks: np.ndarray           # (n, n) int
    tol: np.ndarray             # (n, n) float: the tolerance each pair used
    groups: list[list[int]]     # models sharing a low-rank reference (singletons: dense differences)
    n_fast: int = 0
    n_direct: int = 0
    info: dict = field(default_factory=dict)
    pruned: np.ndarray | None = None   # (n, n) bool: rank not computed, `ranks` holds an upper bound (see `prune`)
    n_pruned: int = 0

    @property
    def low_rank_share(self) -> float:
        """(n - number of groups) / (n - 1): 1 when all differences are low rank, 0 when none are."""
        n = self.ranks.shape[0]
        return (n - len(self.groups)) / (n - 1) if n > 1 else 0.0


def _group(ws: np.ndarray, order: np.ndarray, target, kmax: int, rng, max_refs: int, d2: np.ndarray, kernel=None):
    """Greedy, in the given order: each model joins the nearest reference (of up to `max_refs`) whose difference
    from it is low rank, else becomes a reference itself. `target(i, r)`: the error allowed for D_i = W_i - W_r.
    The factorizations run on `kernel`'s device (recovery.kernels)."""
    refs: list[int] = []
    fac: dict[int, LowRank] = {}
    owner: dict[int, int] = {}
    m, n = ws.shape[1:]
    wd = to_device(ws, kernel)
    xp = ops(wd)
    empty = LowRank(xp.zeros((m, 0), wd), np.zeros(0), xp.zeros((n, 0), wd), 0.0)
    for i in order:
        near = sorted(refs, key=lambda r: d2[i, r])
        for r in near[:max_refs]:
            if np.array_equal(ws[i], ws[r]):
                f = empty
            else:
                f = factor_low_rank(xp.f64(wd[i]) - wd[r], target(i, r), kmax, rng)
            if f is not None:
                fac[i], owner[i] = f, r
                break
        else:
            refs.append(i)
            fac[i], owner[i] = empty, i
    groups = [[i for i in order if owner[i] == r] for r in refs]
    return groups, fac


_JITTER = 1e-14
# core singular values are within 2 sqrt(2 jitter) max|s| (+ float64 round-off, ~1e-13 max|s|) of the pair's:
# allow 4 sqrt(jitter) per unit of s_max(i) + s_max(j) >= max|s|
_CORE_ALLOWANCE = 4 * _JITTER ** 0.5


def _gram_block(gii: np.ndarray, gjj: np.ndarray, gij: np.ndarray, out: np.ndarray) -> None:
    """Write the Gram matrix of [X_i, X_j] (+ jitter I) into the top-left of `out` (rest stays identity)."""
    ki, kj = len(gii), len(gjj)
    out[:ki, :ki] = gii
    out[ki:ki + kj, ki:ki + kj] = gjj
    out[:ki, ki:ki + kj] = gij
    out[ki:ki + kj, :ki] = gij.T
    idx = np.arange(ki + kj)
    out[idx, idx] += _JITTER


def core_svals(fac: list[LowRank], bucket: int = 32, skip: np.ndarray | None = None
               ) -> dict[tuple[int, int], np.ndarray | None]:
    """Singular values of L_i - L_j for every pair i < j of the factors `fac` (but those `skip[i, j]`), from
    small core matrices.

    L_i - L_j = M diag(s_i, -s_j) N^T with M = [A_i, A_j], N = [V_i, V_j]. With Cholesky factors
    M^T M + jitter I = L_M L_M^T (likewise N), sigma(M S N^T) = sigma(L_M^T S L_N) up to 3 sqrt(jitter) max|s|
    (the jitter keeps the factor defined when the two bases share directions). The Gram blocks A_i^T A_j of all
    pairs come from one matrix product per model; the cores are padded (identity Gram, zero s: exact, padding only
    adds zero singular values) to sizes in steps of `bucket` and decomposed in batches: the singular values are
    the square roots of the eigenvalues of C C^T for the core C (within 8 k eps ||C||^2 of the squares: the
    caller allows for it). None: Cholesky failed.
    """
    n = len(fac)
    ks = np.array([f.k for f in fac])
    off = np.concatenate([[0], np.cumsum(ks)])
    xp = ops(fac[0].a)   # the products on the factors' device; the small cores on the host
    a_all = xp.cat([f.a for f in fac], 1)
    v_all = xp.cat([f.v for f in fac], 1)
    gaa = [xp.host(f.a.T @ f.a) for f in fac]
    gvv = [xp.host(f.v.T @ f.v) for f in fac]
    out: dict[tuple[int, int], np.ndarray | None] = {}
    for i in range(n - 1):
        todo = [j for j in range(i + 1, n) if skip is None or not skip[i, j]]
        if not todo:
            continue
        # the Gram blocks A_i^T A_j of this row's pairs, one product (only the columns of pairs not skipped)
        idx = np.concatenate([np.arange(off[j], off[j + 1]) for j in todo])
        ga = xp.host(fac[i].a.T @ xp.take_cols(a_all, idx))
        gv = xp.host(fac[i].v.T @ xp.take_cols(v_all, idx))
        start = dict(zip(todo, np.concatenate([[0], np.cumsum(ks[todo])[:-1]])))
        buckets: dict[int, list[int]] = {}
        for j in todo:
            k = ks[i] + ks[j]
            if k == 0:
                out[(i, j)] = np.zeros(0)
            else:
                buckets.setdefault(-(-k // bucket) * bucket, []).append(j)
        for size, js in buckets.items():
            gm = np.broadcast_to(np.eye(size), (len(js), size, size)).copy()
            gn = gm.copy()
            s = np.zeros((len(js), size))
            for t, j in enumerate(js):
                cols = slice(start[j], start[j] + ks[j])
                _gram_block(gaa[i], gaa[j], ga[:, cols], gm[t])
                _gram_block(gvv[i], gvv[j], gv[:, cols], gn[t])
                s[t, :ks[i]], s[t, ks[i]:ks[i] + ks[j]] = fac[i].s, -fac[j].s
            try:
                lm, ln = np.linalg.cholesky(gm), np.linalg.cholesky(gn)
            except np.linalg.LinAlgError:   # rare: decide pair by pair, None where it fails
                for t, j in enumerate(js):
                    try:
                        lm1, ln1 = np.linalg.cholesky(gm[t]), np.linalg.cholesky(gn[t])
                        out[(i, j)] = _svals((lm1.T * s[t]) @ ln1)
                    except np.linalg.LinAlgError:
                        out[(i, j)] = None
                continue
            sv = _svals((np.swapaxes(lm, 1, 2) * s[:, None, :]) @ ln)
            for t, j in enumerate(js):
                out[(i, j)] = sv[t]
    return out


def _svals(c: np.ndarray) -> np.ndarray:
    """Singular values of (a batch of) square cores, descending, as square roots of the eigenvalues of C C^T."""
    lam = np.linalg.eigvalsh(c @ np.swapaxes(c, -1, -2))
    return np.sqrt(np.maximum(lam, 0.0))[..., ::-1]


def _group_ranks(g: list[int], fac: dict[int, LowRank], tol: np.ndarray, prune: np.ndarray | None, ranks: np.ndarray,
                 pruned: np.ndarray, direct_pairs: list) -> int:
    """Ranks of the pairs of one low-rank group from their factors' cores (see `layer_ranks`), into `ranks`.

    Pairs whose bound k_i + k_j is within `prune` get that bound and a mark in `pruned`; pairs whose singular values
    come too close to the tolerance for the core's error margin are appended to `direct_pairs` (exact SVD later).
    Returns how many pairs the cores decided.
    """
    ks = np.array([fac[i].k for i in g])
    skip = None
    if prune is not None:
        bound_ij = ks[:, None] + ks[None, :]
        skip = bound_ij <= prune[np.ix_(g, g)]
        np.fill_diagonal(skip, False)
        gi = np.asarray(g)
        a_, b_ = np.nonzero(np.triu(skip, 1))
        ranks[gi[a_], gi[b_]] = ranks[gi[b_], gi[a_]] = bound_ij[a_, b_]
        pruned[gi[a_], gi[b_]] = pruned[gi[b_], gi[a_]] = True
    n_fast = 0
    for (a, b), sv in core_svals([fac[i] for i in g], skip=skip).items():
        i, j = g[a], g[b]
        t = tol[i, j]
        top = fac[i].s.max(initial=0.0) + fac[j].s.max(initial=0.0)
        lam_err = 16 * (fac[i].k + fac[j].k) * EPS64 * top ** 2   # eigenvalues of C C^T (see core_svals)
        margin = fac[i].err + fac[j].err + _CORE_ALLOWANCE * top + max(np.sqrt(lam_err), lam_err / t)
        if sv is None or margin >= t / 2 or np.any(np.abs(sv - t) <= margin):
            direct_pairs.append((i, j))
            continue
        ranks[i, j] = ranks[j, i] = int(np.count_nonzero(sv > t))
        n_fast += 1
    return n_fast


def layer_ranks(w: np.ndarray, rank_tol: str | float = "weight", *, method: str = "fast", seed: int = 0,
                kmax_frac: float = 0.25, max_refs: int = 3, dense: str = "direct", d2: np.ndarray | None = None,
                prune: np.ndarray | None = None, kernel=None) -> RankResult:
    """Ranks of W_i - W_j for all pairs of the stack `w` (n, *shape); conv kernels are flattened to matrices.

    Args:
        rank_tol: "weight" | "delta" | float (see module doc).
        method: "fast" (certified low-rank cores, direct SVD where needed) or "direct" (SVD per pair).
        seed: seeds the range finder's random matrices (they change speed, never results).
        kmax_frac: a difference of rank above kmax_frac x min(m, n) counts as not low rank.
        max_refs: how many references a model tries before it starts a group of its own.
        dense: what to do with pairs in different groups: "direct" (exact SVD) or "skip" (rank -1: not computed).
        d2: the models' squared l2 distances on this layer when already known (else computed). Models are taken
            in order of their summed distance to the others, so the first reference is the medoid, from which
            the differences of a LoRA tree have the lowest ranks (smaller factors and cores: speed only).
        prune: (n, n) ints or None. A pair of one low-rank group whose factor ranks add up to k_i + k_j <=
            prune[i, j] is not decomposed: its rank is at most k_i + k_j (the residuals are below tol / 4, so they
            cannot lift another singular value above tol), and that bound is stored in `ranks`, flagged in
            `pruned`. With prune = the running maximum over earlier layers, the maximum over layers (paper Eq. 2)
            stays exact while most cores of later layers are never built.
        kernel: recovery.kernels.Kernel: the device of the factorizations and core products (None: numpy).
    """
    ws = np.stack([as_matrix(x) for x in w]) if w.ndim != 3 else w
    n, m, d = ws.shape
    if isinstance(rank_tol, str) and rank_tol not in RANK_TOLS:
        raise ValueError(f"rank_tol must be one of {RANK_TOLS} or a number, got {rank_tol!r}")
    if method not in ("fast", "direct"):
        raise ValueError(f"method must be 'fast' or 'direct', got {method!r}")
    tol = np.zeros((n, n))
    if rank_tol == "delta":
        tol = delta_tolerances(ws)
        return RankResult(direct_ranks(ws, tol), tol, [[i] for i in range(n)], 0, n * (n - 1) // 2,
                          {"note": "rank_tol=delta: direct SVD per pair"})
    explicit = not isinstance(rank_tol, str)
    if method == "direct":
        if explicit:
            tol[:] = float(rank_tol)
        else:
            s = np.array([spectral_norm(x) for x in ws])
            tol = EPS32 * max(m, d) * np.maximum(s[:, None], s[None, :])
        return RankResult(direct_ranks(ws, tol), tol, [[i] for i in range(n)], 0, n * (n - 1) // 2)
    rng = np.random.default_rng(seed)
    kmax = max(1, int(kmax_frac * min(m, d)))
    d2 = pairwise_sq_dists(ws) if d2 is None else d2
    order = np.argsort(np.sqrt(d2).sum(axis=1), kind="stable")
    ref_norms: dict[int, float] = {}

    def target(i: int, r: int) -> float:
        """tol / 8 for every pair with i: S >= ||W_r||_2 + ||D_i||_2 >= ||W_r||_2 + ||D_i||_F / sqrt(min(m, d))."""
        if explicit:
            return float(rank_tol) / 8
        if r not in ref_norms:
            ref_norms[r] = spectral_norm(ws[r])
        return EPS32 * max(m, d) * (ref_norms[r] + np.sqrt(d2[i, r] / min(m, d))) / 8

    groups, fac = _group(ws, order, target, kmax, rng, max_refs, d2, kernel)
    # per-model upper bound S_i of ||W_i||_2 and the tolerance of each pair
    if explicit:
        tol[:] = float(rank_tol)
    else:
        bound = np.zeros(n)
        for g in groups:
            top = ref_norms[g[0]] if g[0] in ref_norms else spectral_norm(ws[g[0]])
            bound[g] = top + max(float(fac[i].s.max(initial=0.0)) + fac[i].err for i in g)
        tol = EPS32 * max(m, d) * np.maximum(bound[:, None], bound[None, :])
    ranks = np.zeros((n, n), dtype=np.int64)
    direct_pairs, n_fast = [], 0
    gid = {i: k for k, g in enumerate(groups) for i in g}
    pruned = np.zeros((n, n), dtype=bool)
    for g in groups:
        if len(g) >= 2:
            n_fast += _group_ranks(g, fac, tol, prune, ranks, pruned, direct_pairs)
    cross = [(i, j) for i, j in zip(*np.triu_indices(n, 1)) if gid[i] != gid[j]]
    if dense == "skip":
        for i, j in cross:
            ranks[i, j] = ranks[j, i] = -1
    else:
        direct_pairs += cross
    if direct_pairs:
        ranks += direct_ranks(ws, tol, direct_pairs)
    return RankResult(ranks, tol, groups, n_fast, len(direct_pairs),
                      {"ranks_from_ref": {i: fac[i].k for i in range(n)}, "kmax": kmax}, pruned,
                      int(np.triu(pruned, 1).sum()))


def reduce_ranks(per_layer: list[np.ndarray], how: str = "max") -> np.ndarray:
    """Combine per-layer rank matrices: "max" (paper Eq. 2) or "sum"."""
    if how not in ("max", "sum"):
        raise ValueError(f"rank_reduce must be 'max' or 'sum', got {how!r}")
    stack = np.stack(per_layer).astype(np.float64)
    return stack.max(axis=0) if how == "max" else stack.sum(axis=0)
