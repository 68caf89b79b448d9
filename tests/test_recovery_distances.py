"""Distances on synthetic weights with known answers (dense deltas for full FT, low-rank deltas for LoRA).

These test the mechanics (exactness against numpy), not the paper's hypotheses.
"""
import numpy as np
import pytest

from recovery.distances import (EPS32, direct_ranks, factor_low_rank, layer_ranks, pairwise_sq_dists,
                                reduce_ranks, spectral_norm)


def _lora_stack(m=96, d=64, seed=0):
    """Root, two LoRA children (ranks 4, 6: sibling ranks add to 10), a grandchild (rank 3 on top of child 1),
    two models sharing the same B (difference rank 2, not 4), and an unrelated model."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((m, d)) * 0.02

    def low(r, b=None):
        b = rng.standard_normal((m, r)) if b is None else b
        return 1e-3 * b @ rng.standard_normal((r, d))
    c1, c2 = w0 + low(4), w0 + low(6)
    b = rng.standard_normal((m, 2))
    ws = [w0, c1, c2, c1 + low(3), w0 + low(2, b), w0 + low(2, b), rng.standard_normal((m, d)) * 0.02]
    return np.stack(ws).astype(np.float32)


def test_pairwise_sq_dists_matches_direct_and_zero_for_identical():
    """Gram-based squared distances equal the direct float64 ones; identical rows give exactly 0."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 1000)).astype(np.float32)
    x[3] = x[1]
    d2 = pairwise_sq_dists(x)
    ref = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, ref, rtol=1e-9, atol=1e-12)
    assert d2[1, 3] == 0.0 and d2[3, 1] == 0.0


def test_pairwise_sq_dists_close_pairs_far_from_mean():
    """Two clusters far apart, members 1e-6 apart: the per-group recentring keeps relative precision."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(5000) * 10, rng.standard_normal(5000) * 10
    x = np.stack([a, a + 1e-6 * rng.standard_normal(5000), b, b + 1e-6 * rng.standard_normal(5000)])
    d2 = pairwise_sq_dists(x, chunk=777)
    ref = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, ref, rtol=1e-6)


@pytest.mark.parametrize("rank_tol", ["weight", 1e-4])
def test_fast_ranks_equal_matrix_rank(rank_tol):
    """Fast ranks == numpy.linalg.matrix_rank with the same explicit tolerance, for every pair."""
    ws = _lora_stack()
    res = layer_ranks(ws, rank_tol)
    d64 = ws.astype(np.float64)
    for i in range(len(ws)):
        for j in range(len(ws)):
            if i != j:
                assert res.ranks[i, j] == np.linalg.matrix_rank(d64[i] - d64[j], tol=res.tol[i, j])
    assert res.ranks[1, 2] == 10            # siblings: ranks add
    assert res.ranks[0, 3] == 7 and res.ranks[1, 3] == 3
    assert res.ranks[4, 5] == 2            # shared B: directions shared, rank 2 not 4
    assert res.ranks[0, 6] == 64           # unrelated model: full rank (direct path)
    assert res.n_fast > 0 and res.n_direct > 0
    assert len(res.groups) == 2


def test_fast_equals_direct_method_and_default_tolerance():
    """method='fast' and method='direct' agree; default tol = eps32 x max(shape) x S, max ||W_i||_2 <= S <= ||W_ref|| + max ||D_i||."""
    ws = _lora_stack(seed=3)
    fast, direct = layer_ranks(ws), layer_ranks(ws, method="direct")
    np.testing.assert_array_equal(fast.ranks, direct.ranks)
    s = max(spectral_norm(w) for w in ws[:6])
    bound = spectral_norm(ws[0]) + max(spectral_norm(w.astype(np.float64) - ws[0]) for w in ws[:6])
    t = fast.tol[0, 1] / (EPS32 * 96)
    assert s <= t <= bound * (1 + 1e-6)


def test_tiny_lora_keeps_its_rank_with_weight_tolerance_but_not_delta():
    """A rank-8 update at 1e-6 scale stored in float32: weight-relative tol sees rank 8; numpy's default sees noise."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((128, 128)) * 0.02).astype(np.float32)
    c = (w + 1e-5 * rng.standard_normal((128, 8)) @ rng.standard_normal((8, 128)) / 8).astype(np.float32)
    ws = np.stack([w, c])
    assert layer_ranks(ws, "weight").ranks[0, 1] == 8
    delta = layer_ranks(ws, "delta")
    assert delta.ranks[0, 1] > 8
    assert delta.ranks[0, 1] == np.linalg.matrix_rank(ws[1].astype(np.float64) - ws[0], tol=delta.tol[0, 1])


def test_dense_differences_fall_back_to_direct():
    """Full fine-tuning (dense deltas): no low-rank groups, ranks from the direct SVD, still exact."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 32)).astype(np.float32)
    ws = np.stack([w, w + 0.01 * rng.standard_normal((40, 32)), w + 0.01 * rng.standard_normal((40, 32))]).astype(np.float32)
    res = layer_ranks(ws)
    assert res.n_fast == 0 and res.low_rank_share == 0.0
    np.testing.assert_array_equal(res.ranks, direct_ranks(ws, res.tol))
    skipped = layer_ranks(ws, dense="skip")
    assert (skipped.ranks[np.triu_indices(3, 1)] == -1).all()


def test_conv_kernels_are_flattened():
    """A 4-D conv kernel's rank is that of its (out, in*k*k) matrix."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    delta = (rng.standard_normal((16, 2)) @ rng.standard_normal((2, 36))).reshape(16, 4, 3, 3) * 1e-2
    res = layer_ranks(np.stack([w, (w + delta).astype(np.float32)]))
    assert res.ranks[0, 1] == 2


def test_factor_low_rank_certificate():
    """The factor's error bound really bounds the spectral norm of the residual; too-high rank returns None."""
    rng = np.random.default_rng(7)
    d = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 50)) + 1e-9 * rng.standard_normal((60, 50))
    f = factor_low_rank(d, 1e-6, 20, rng)
    assert f.k == 5
    assert spectral_norm(d - (f.a * f.s) @ f.v.T) <= f.err + 1e-15
    assert factor_low_rank(rng.standard_normal((60, 50)), 1e-6, 20, rng) is None


def test_reduce_ranks_and_bad_options():
    """max (paper Eq. 2) and sum reductions; unknown options are clear errors."""
    a, b = np.array([[0, 2], [2, 0]]), np.array([[0, 5], [5, 0]])
    assert reduce_ranks([a, b], "max")[0, 1] == 5 and reduce_ranks([a, b], "sum")[0, 1] == 7
    with pytest.raises(ValueError, match="rank_reduce"):
        reduce_ranks([a], "mean")
    with pytest.raises(ValueError, match="rank_tol"):
        layer_ranks(_lora_stack(), "nope")


# ------------------------------------------------------------------ analyze_folder / edge_relations end to end
from recovery.synthetic import vit_shapes, write_tree  # noqa: E402
from recovery.weights import analyze_folder, edge_relations  # noqa: E402

TREE = {"r": ["a", "b"], "a": ["a1"]}


def test_analyze_full_ft_auto_picks_l2_and_l2_is_eq1(tmp_path):
    """Dense deltas: auto resolves to l2 (evidence in info); l2 = mean over layers of Frobenius norms; rms too."""
    write_tree(tmp_path, vit_shapes(16, 1), TREE, ["r"], method="full", scale=1e-2)
    res = analyze_folder(tmp_path, progress=False)
    assert res.distance_metric == "l2" and "-> l2" in res.info["auto"]["reason"]
    from safetensors.numpy import load_file
    w = {i: load_file(str(tmp_path / "models" / f"{i}.safetensors")) for i in res.ids}
    names = res.layers
    want = np.mean([np.linalg.norm(w["a"][k].astype(np.float64) - w["r"][k]) for k in names])
    # float32 Gram blocks summed in float64 (recovery.kernels): float32-level agreement with the direct float64 value
    assert res.l2[res.ids.index("a"), res.ids.index("r")] == pytest.approx(want, rel=1e-6)
    rms = analyze_folder(tmp_path, distance={"metric": "rms"}, progress=False)
    want = np.mean([np.sqrt(np.mean((w["a"][k].astype(np.float64) - w["r"][k]) ** 2)) for k in names])
    assert rms.distance[res.ids.index("a"), res.ids.index("r")] == pytest.approx(want, rel=1e-6)
    assert rms.distance_metric == "rms"
    np.testing.assert_array_equal(res.distance, res.distance.T)


def test_analyze_lora_auto_picks_lora_rank_max_and_sum(tmp_path):
    """Low-rank deltas (rank 4 on qkv): auto resolves to lora_rank; max is Eq. 2, sum adds over layers."""
    write_tree(tmp_path, vit_shapes(32, 2), TREE, ["r"], method="lora", ranks=(4,), scale=1.0)
    res = analyze_folder(tmp_path, progress=False)
    i = {k: n for n, k in enumerate(res.ids)}
    assert res.distance_metric == "lora_rank"
    assert res.distance[i["r"], i["a"]] == 4 and res.distance[i["a"], i["b"]] == 8 and res.distance[i["r"], i["a1"]] == 8
    summed = analyze_folder(tmp_path, distance={"metric": "lora_rank", "rank_reduce": "sum"}, progress=False)
    assert summed.distance[i["r"], i["a"]] == 4 * 2   # two qkv layers changed, rank 4 each
    explicit = analyze_folder(tmp_path, distance={"metric": "lora_rank", "rank_tol": 1e-3}, progress=False)
    np.testing.assert_array_equal(explicit.distance, res.distance)
    delta = analyze_folder(tmp_path, distance={"metric": "lora_rank", "rank_tol": "delta"}, progress=False)
    assert (delta.distance >= res.distance).all()
    assert edge_relations(tmp_path, [("r", "a"), ("a", "a1")]) == {("r", "a"): "adapter", ("a", "a1"): "adapter"}


def test_edge_relations_finetune_and_unknown_ids(tmp_path):
    """Dense child deltas are "finetune"; ids not in the folder are a clear error."""
    write_tree(tmp_path, vit_shapes(16, 1), TREE, ["r"], method="full", scale=1e-2)
    assert edge_relations(tmp_path, [("r", "a")], layers={"kinds": ["mlp"]}) == {("r", "a"): "finetune"}
    with pytest.raises(Exception, match="not among the models"):
        edge_relations(tmp_path, [("r", "nope")])


def test_bad_option_names(tmp_path):
    """Unknown option keys and metric names are reported, not ignored."""
    write_tree(tmp_path, vit_shapes(8, 1), {"r": ["a"]}, ["r"])
    with pytest.raises(ValueError, match="unknown option"):
        analyze_folder(tmp_path, distance={"metrc": "l2"}, progress=False)
    with pytest.raises(ValueError, match="metric"):
        analyze_folder(tmp_path, distance={"metric": "cosine"}, progress=False)


# ------------------------------------------------------------------ fast-rank internals (synthetic factors)
from recovery.distances import LowRank, core_svals  # noqa: E402


def test_core_svals_equal_svd_of_explicit_differences():
    """Batched, padded cores: singular values of L_i - L_j equal those of the explicit matrix, for factors of
    different ranks (several padding buckets), a zero factor, and two factors sharing directions."""
    rng = np.random.default_rng(11)
    m, n = 70, 50

    def orth(k, rows):
        return np.linalg.qr(rng.standard_normal((rows, k)))[0] if k else np.zeros((rows, 0))
    facs = [LowRank(orth(k, m), np.sort(rng.uniform(0.1, 2.0, k))[::-1], orth(k, n), 0.0) for k in (0, 3, 9, 20, 33)]
    facs.append(LowRank(facs[3].a[:, :5], facs[3].s[:5] * 1.5, facs[3].v[:, :5], 0.0))   # shares facs[3]'s directions
    dense = [(f.a * f.s) @ f.v.T for f in facs]
    out = core_svals(facs, bucket=8)
    assert set(out) == {(i, j) for i in range(len(facs)) for j in range(i + 1, len(facs))}
    for (i, j), sv in out.items():
        want = np.linalg.svd(dense[i] - dense[j], compute_uv=False)
        got = np.zeros(len(want))
        top = np.sort(sv)[::-1][: len(want)]
        got[: len(top)] = top
        np.testing.assert_allclose(got, want, atol=1e-6 * max(1.0, want[0]))
        assert np.sum(sv > 1e-6) == np.linalg.matrix_rank(dense[i] - dense[j], tol=1e-6)


def test_fast_ranks_with_small_norm_medoid_and_large_deltas():
    """Weight tolerance when the medoid has small weights and the LoRA deltas are large (float32 rounding of the
    children exceeds a tolerance taken from the medoid alone): models still share one low-rank group, and the
    ranks equal matrix_rank with the returned tolerances."""
    rng = np.random.default_rng(12)
    m, d = 96, 32
    w0 = rng.standard_normal((m, d)) * 0.02
    ws = [w0] + [w0 + rng.standard_normal((m, r)) @ rng.standard_normal((r, d)) / np.sqrt(d) for r in (2, 3, 4)]
    ws = np.stack(ws).astype(np.float32)
    res = layer_ranks(ws, "weight")
    assert res.low_rank_share == 1.0 and res.n_direct == 0
    d64 = ws.astype(np.float64)
    for i, j in zip(*np.triu_indices(len(ws), 1)):
        assert res.ranks[i, j] == np.linalg.matrix_rank(d64[i] - d64[j], tol=res.tol[i, j])
    assert res.ranks[0, 3] == 4 and res.ranks[1, 2] == 5


def test_pairwise_sq_dists_equality_classes():
    """Rows identical in classes ({0, 2, 4}, {1, 3}) get exact zeros; a row differing in one ulp does not."""
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal(3000).astype(np.float32), rng.standard_normal(3000).astype(np.float32)
    c = a.copy()
    c[17] = np.nextafter(c[17], np.float32(np.inf))
    x = np.stack([a, b, a, b, a, c])
    d2 = pairwise_sq_dists(x)
    zero = d2 == 0
    want = np.zeros((6, 6), dtype=bool)
    for cls in ([0, 2, 4], [1, 3], [5]):
        want[np.ix_(cls, cls)] = True
    np.testing.assert_array_equal(zero, want)
