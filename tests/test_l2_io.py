"""The l2 pass reads each selected byte once: the prefetching reader returns what the plain one does, finite checks
still catch NaN rows, full-rank certificates label fine-tuning edges as the second read would, and the l2 matrix
equals a direct float64 computation."""
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from recovery.accumulate import FinetuneCertificates
from recovery.checkpoints import discover
from recovery.reader import iter_stacked, open_all
from recovery.synthetic import finetune, random_weights, vit_shapes, write_tree
from recovery.weights import _nonfinite_rows, analyze_folder, edge_relations


def _folder(tmp_path, method="full", seed=0):
    shapes = vit_shapes(48, 2)
    kids = {"r": ["a", "b", "c"], "a": ["d", "e"]}
    g = write_tree(tmp_path, shapes, kids, ["r"], seed=seed, method=method, ranks=(2, 3), scale=1e-2, graph=False)
    return tmp_path, [tuple(e) for e in g["edges"]]


def test_prefetch_reads_what_the_plain_reader_reads(tmp_path):
    folder, _ = _folder(tmp_path)
    cat = discover(folder)
    names = sorted(cat.models[0].tensors)
    rows = {"blocks.0.attn.qkv.weight": (96, 144)}
    stack, readers = open_all(cat.models)
    with stack:
        plain = {k: v.copy() for k, v in iter_stacked(readers, names, rows)}
        fetched = {k: v.copy() for k, v in iter_stacked(readers, names, rows, prefetch=True)}
        assert list(fetched) == names
        for k in names:
            assert np.array_equal(plain[k], fetched[k]), k
        assert fetched["blocks.0.attn.qkv.weight"].shape == (len(cat.models), 48, 48)
        first = next(iter_stacked(readers, names, prefetch=True))   # abandoned generator: thread stops, no hang
        assert first[0] == names[0]
    ref = load_file(str(folder / "a.safetensors"))["blocks.1.mlp.fc1.weight"]
    assert np.array_equal(plain["blocks.1.mlp.fc1.weight"][[m.id for m in cat.models].index("a")], ref)


def test_nonfinite_rows():
    x = np.ones((4, 1000), dtype=np.float32)
    x[1, 7], x[3, 999] = np.nan, -np.inf
    assert _nonfinite_rows(x) == [1, 3]
    big = np.full((2, 10), 3e38, dtype=np.float32)   # the row sums overflow, the values are finite
    assert _nonfinite_rows(big) == []


def test_l2_equals_direct_float64(tmp_path):
    folder, _ = _folder(tmp_path)
    wa = analyze_folder(folder, distance={"metric": "l2"}, progress=False, device="cpu")
    w = {i: load_file(str(folder / f"{i}.safetensors")) for i in wa.ids}
    for a in range(len(wa.ids)):
        for b in range(a + 1, len(wa.ids)):
            direct = np.mean([np.linalg.norm(w[wa.ids[a]][k].astype(np.float64) - w[wa.ids[b]][k])
                              for k in wa.layers])
            assert wa.l2[a, b] == pytest.approx(direct, rel=1e-6)
    assert wa.info["passes"] == 1


def test_certificates_label_full_finetunes_without_a_second_read(tmp_path):
    folder, edges = _folder(tmp_path, "full")
    wa = analyze_folder(folder, distance={"metric": "l2"}, progress=False)
    assert type(wa.rank_evidence).__name__ == "SketchEvidence"
    assert all(wa.rank_evidence.relation(p, c) == "finetune" for p, c in edges)
    reread = edge_relations(folder, edges)
    assert reread == {e: "finetune" for e in edges}
    assert edge_relations(folder, edges, evidence=wa.rank_evidence) == reread


def test_certificates_do_not_claim_lora_edges(tmp_path):
    folder, edges = _folder(tmp_path, "lora", seed=1)
    wa = analyze_folder(folder, distance={"metric": "l2"}, layers={"kinds": ["query", "value"]}, progress=False)
    assert all(wa.rank_evidence.relation(p, c) is None for p, c in edges)   # low rank: left to the direct path
    labels = edge_relations(folder, edges, layers={"kinds": ["query", "value"]}, evidence=wa.rank_evidence)
    assert labels == {e: "adapter" for e in edges}


def test_certificate_is_a_proof_on_a_borderline_rank():
    """A delta of rank exactly limit + 1 is certified only when its smallest singular values clear the bound."""
    rng = np.random.default_rng(5)
    m = d = 64
    limit = 16
    w0 = (0.02 * rng.standard_normal((m, d))).astype(np.float32)
    big = w0 + (1e-2 * rng.standard_normal((m, limit + 1)) @ rng.standard_normal((limit + 1, d)) / 8)
    low = w0 + (1e-2 * rng.standard_normal((m, limit)) @ rng.standard_normal((limit, d)) / 8)
    ws = np.stack([w0, big, low]).astype(np.float32)
    from recovery.accumulate import LayerBatch, certified
    from recovery.distances import pairwise_sq_dists
    from recovery.layers import Layer
    cert = FinetuneCertificates(3, 1e-6, seed=0, max_layers=1)
    cert.update(LayerBatch(Layer("w", "w"), ws, np.arange(3), pairwise_sq_dists(ws)))
    lay = cert.layers[0]
    assert lay["sub"].shape == (3, 34, 34)
    assert not certified(lay, 0, 2)    # rank 16 = limit: never certified
    ranks = [np.linalg.matrix_rank(ws[i].astype(np.float64) - ws[0], tol=1e-6) for i in (1, 2)]
    assert ranks == [limit + 1, limit]
    if certified(lay, 0, 1):
        assert ranks[0] > limit


def test_prefetch_asks_the_kernel_for_the_next_tensors_bytes(tmp_path, monkeypatch):
    """The prefetching reader hints (posix_fadvise WILLNEED) the byte ranges of the tensor it reads and of the
    READ_AHEAD next ones, in every file, so a cold disk works while the caller computes; row slices hint only their
    rows."""
    import os

    import recovery.checkpoints as ck

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this OS: the hint is a no-op")
    folder, _ = _folder(tmp_path)
    cat = discover(folder)
    names = ["blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"]
    rows = {"blocks.0.attn.qkv.weight": (96, 144)}
    hints: list[tuple[int, int, int]] = []
    monkeypatch.setattr(ck.os, "posix_fadvise", lambda fd, off, length, advice: hints.append((fd, off, length)))
    stack, readers = open_all(cat.models)
    with stack:
        list(iter_stacked(readers, names, rows, prefetch=True))
        fds = {r._files[r.model.tensors[names[0]].file].fileno(): r for r in readers}
    assert {fd for fd, _, _ in hints} == set(fds)
    for fd, r in fds.items():
        info = {k: r.model.tensors[k] for k in names}
        per_row = (info[names[1]].end - info[names[1]].start) // info[names[1]].shape[0]
        want = {(info[names[0]].start, info[names[0]].end - info[names[0]].start),
                (info[names[1]].start + 96 * per_row, 48 * per_row),
                (info[names[2]].start, info[names[2]].end - info[names[2]].start)}
        assert {(off, length) for f, off, length in hints if f == fd} == want
