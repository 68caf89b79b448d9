"""Fast LoRA ranks equal numpy.linalg.matrix_rank at the same tolerance, on random and adversarial low-rank cases;
max-reduce pruning, first-pass edge labels and row-block reads give the same answers as the direct paths."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from recovery.distances import factor_low_rank, layer_ranks, spectral_norm


def _direct(ws: np.ndarray, tol: np.ndarray) -> np.ndarray:
    n = len(ws)
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = np.linalg.matrix_rank(ws[i].astype(np.float64) - ws[j], tol=tol[i, j])
    return out


def _low(rng, m, d, r, scale=1e-2):
    return scale * rng.standard_normal((m, r)) @ rng.standard_normal((r, d)) / np.sqrt(r * d)


def _adversarial_stack(seed: int, m: int = 80, d: int = 64) -> np.ndarray:
    """Root; equal deltas (a duplicate-by-delta pair); nested subspaces (child's delta inside its parent's column
    space); a rank-0 pair (two identical models); a LoRA chain; an unrelated dense model."""
    rng = np.random.default_rng(seed)
    w0 = 0.02 * rng.standard_normal((m, d))
    a = _low(rng, m, d, 6)
    b = rng.standard_normal((m, 3))
    nested_parent = w0 + 1e-2 * b @ rng.standard_normal((3, d)) / 8
    nested_child = nested_parent + 1e-2 * b[:, :2] @ rng.standard_normal((2, d)) / 8
    chain1 = w0 + _low(rng, m, d, 4)
    chain2 = chain1 + _low(rng, m, d, 5)
    ws = [w0, w0 + a, w0 + a, nested_parent, nested_child, chain1, chain2, chain2.copy(), w0 + _low(rng, m, d, 1),
          0.02 * rng.standard_normal((m, d))]
    return np.stack(ws).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rank_tol", ["weight", 1e-5])
def test_adversarial_ranks_equal_matrix_rank(seed, rank_tol):
    """Equal deltas (rank 0 between them), nested subspaces, identical models, chains, a dense outsider."""
    ws = _adversarial_stack(seed)
    res = layer_ranks(ws, rank_tol, seed=seed)
    np.testing.assert_array_equal(res.ranks, _direct(ws, res.tol))
    assert res.ranks[1, 2] == 0 and res.ranks[6, 7] == 0
    assert res.ranks[3, 4] == 2 and res.ranks[0, 4] == 3      # nested: the child adds no new column direction
    assert res.ranks[5, 6] == 5 and res.ranks[0, 6] == 9
    assert res.n_fast > 0


@pytest.mark.parametrize("seed", range(4))
def test_random_low_rank_trees_equal_matrix_rank(seed):
    """Random LoRA trees (ranks 1-12, random scales over three decades) against matrix_rank, explicit tolerance."""
    rng = np.random.default_rng(100 + seed)
    m, d = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    ws = [0.02 * rng.standard_normal((m, d))]
    for _ in range(9):
        parent = ws[int(rng.integers(len(ws)))]
        ws.append(parent + _low(rng, m, d, int(rng.integers(1, 13)), 10 ** rng.uniform(-3, 0)))
    ws = np.stack(ws).astype(np.float32)
    res = layer_ranks(ws, 1e-4, seed=seed)
    np.testing.assert_array_equal(res.ranks, _direct(ws, res.tol))


def test_near_tolerance_singular_values_fall_back_exactly():
    """A delta with singular values just above and just below tol: the certificate cannot decide, the direct SVD
    does, and the rank still equals matrix_rank on both sides of the tolerance."""
    rng = np.random.default_rng(7)
    m, d = 64, 48
    u = np.linalg.qr(rng.standard_normal((m, 4)))[0]
    v = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    w0 = 0.02 * rng.standard_normal((m, d))
    tol = 1e-3
    for svals in ([1e-2, 5e-3, tol * (1 + 1e-6), tol * (1 - 1e-6)], [1e-2, tol * (1 + 3e-7), tol * (1 - 3e-7), 2e-3]):
        delta = (u * np.array(svals)) @ v.T
        ws = np.stack([w0, w0 + delta, w0 + 0.5 * delta]).astype(np.float32)
        res = layer_ranks(ws, tol)
        np.testing.assert_array_equal(res.ranks, _direct(ws, res.tol))


def test_factor_certificate_float32_sketch_and_fallback():
    """Large delta with a tight target: the float32 sketch stalls, float64 blocks finish, the bound still holds;
    a rank above kmax gives None."""
    rng = np.random.default_rng(8)
    d = 10 * rng.standard_normal((120, 7)) @ rng.standard_normal((7, 90))
    f = factor_low_rank(d, 1e-7, 30, rng)
    assert f.k == 7
    assert spectral_norm(d - (f.a * f.s) @ f.v.T) <= f.err + 1e-12
    assert factor_low_rank(_low(rng, 120, 90, 40, 1.0), 1e-9, 30, rng) is None


def test_pruning_keeps_the_max_exact():
    """prune = running max of earlier layers: pruned entries are upper bounds <= the running max, and the max over
    layers equals the max of the direct ranks."""
    rng = np.random.default_rng(9)
    m, d = 60, 50
    ws0 = [0.02 * rng.standard_normal((m, d)) for _ in range(3)]
    layers = []
    ranks = [3, 5, 2, 4, 6]
    for w0 in ws0:
        stack = [w0]
        for r in ranks:
            stack.append(stack[len(stack) // 2] + _low(rng, m, d, r))
        layers.append(np.stack(stack).astype(np.float32))
    running = np.zeros((6, 6), dtype=np.int64)
    direct_max = np.zeros((6, 6), dtype=np.int64)
    n_pruned = 0
    for ws in layers:
        res = layer_ranks(ws, 1e-5, prune=np.minimum(running, 12))
        exact = _direct(ws, res.tol)
        assert (res.ranks[res.pruned] >= exact[res.pruned]).all()
        assert (res.ranks[res.pruned] <= running[res.pruned]).all()
        np.testing.assert_array_equal(res.ranks[~res.pruned], exact[~res.pruned])
        running = np.maximum(running, res.ranks)
        direct_max = np.maximum(direct_max, exact)
        n_pruned += res.n_pruned
    np.testing.assert_array_equal(running, direct_max)
    assert n_pruned > 0


def _write(folder, models: dict[str, dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for mid, tensors in models.items():
        save_file(tensors, str(folder / f"{mid}.safetensors"))


def test_first_pass_edge_labels_equal_second_pass(tmp_path):
    """edge_relations from the first pass's rank evidence equals the one that reads the weights again, on a tree
    with adapter and full fine-tuning edges; a fused qkv is read by its value rows only and gives the same
    distances as the whole tensor."""
    from recovery.weights import analyze_folder, edge_relations

    rng = np.random.default_rng(10)
    dim = 32
    root = {f"blocks.{b}.attn.qkv.weight": (0.02 * rng.standard_normal((3 * dim, dim))).astype(np.float32)
            for b in range(2)}
    root.update({f"blocks.{b}.mlp.fc1.weight": (0.02 * rng.standard_normal((2 * dim, dim))).astype(np.float32)
                 for b in range(2)})

    def child(parent, lora: bool):
        out = {}
        for k, v in parent.items():
            if lora and "qkv" in k:
                out[k] = (v + _low(rng, *v.shape, 2, 0.05)).astype(np.float32)
            elif lora:
                out[k] = v.copy()
            else:
                out[k] = (v + 1e-3 * rng.standard_normal(v.shape)).astype(np.float32)
        return out
    a = child(root, True)
    models = {"root": root, "a": a, "a1": child(a, True), "b": child(root, False), "b1": child(child(root, False), True)}
    _write(tmp_path, models)
    edges = [("root", "a"), ("a", "a1"), ("root", "b"), ("root", "b1")]
    for metric in ("lora_rank", "auto"):
        wa = analyze_folder(tmp_path, distance={"metric": metric}, progress=False)
        fast = edge_relations(tmp_path, edges, sources=wa.sources, selected=wa.selected, evidence=wa.rank_evidence)
        slow = edge_relations(tmp_path, edges)
        assert fast == slow
        assert fast[("root", "a")] == "adapter" and fast[("root", "b")] == "finetune"
    rows = analyze_folder(tmp_path, layers={"kinds": ["value"]}, direction={"kinds": ["value"]}, progress=False)
    ids = rows.ids
    for i, p in enumerate(ids):
        for j, q in enumerate(ids):
            qkv = [k for k in root if "qkv" in k]
            want = np.mean([np.linalg.norm(models[p][k][2 * dim:].astype(np.float64) - models[q][k][2 * dim:])
                            for k in qkv])
            # float32 Gram blocks (kernels): d^2 = |p|^2 + |q|^2 - 2 p.q loses ~eps32 (|p|^2 + |q|^2), so d is off by
            # up to that over 2d (large relative error for near-identical models; the BLAS path decides how much)
            sq = np.mean([np.linalg.norm(models[p][k][2 * dim:]) ** 2 + np.linalg.norm(models[q][k][2 * dim:]) ** 2
                          for k in qkv])
            tol = 16 * np.finfo(np.float32).eps * sq / (2 * want) if i != j else 0.0
            assert abs(rows.l2[i, j] - want) <= tol + 1e-12
