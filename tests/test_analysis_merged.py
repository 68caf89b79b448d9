"""Merged-models experiment (Table 6): soups and streamed cosines against direct numpy (synthetic weights),
and a toy run (3 random-init stand-in roots, their 3 soups, 2 children each, a few steps). The stand-ins are
independent random weights of equal scale, so a soup's children lie at cosine ~1/sqrt(2) to both its parents'
children and ~0 to the third: clustering and parent calls must be exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from safetensors.numpy import save_file

from analysis.cosines import cosine_to_centres, soup, top_k_parents
from tests.toy_runs import compose_toy, shared_dir, toy_roots


def test_soup_averages_shared_tensors():
    a = {"w": torch.ones(2, 2), "head": torch.zeros(3), "n": torch.tensor([1])}
    b = {"w": torch.full((2, 2), 3.0), "head": torch.zeros(4), "n": torch.tensor([5])}
    merged, kept = soup([a, b])
    assert torch.equal(merged["w"], torch.full((2, 2), 2.0))
    assert kept == ["head", "n"] and merged["head"].shape == (3,)
    with pytest.raises(ValueError, match="at least two"):
        soup([a])


@pytest.mark.parametrize("vectors", ["raw", "centered"])
def test_cosine_matches_direct_computation(tmp_path, vectors):
    """Synthetic weights in two layers: the streamed per-layer cosine equals numpy on concatenated vectors."""
    rng = np.random.default_rng(0)
    ids = [f"m{i}" for i in range(7)]
    states = {m: {"a": rng.standard_normal((4, 3)).astype(np.float32),
                  "b": rng.standard_normal(5).astype(np.float32)} for m in ids}
    files = {}
    for m, s in states.items():
        files[m] = tmp_path / f"{m}.safetensors"
        save_file(s, str(files[m]))
    groups = {"m0": "A", "m1": "A", "m2": "B", "m3": "B", "m4": "C"}
    got = cosine_to_centres(files, groups, ["m5", "m6"], ["a", "b"], vectors=vectors)
    x = np.stack([np.concatenate([states[m]["a"].ravel(), states[m]["b"]]).astype(np.float64) for m in ids])
    if vectors == "centered":
        x = x - x.mean(0)
    for q in ("m5", "m6"):
        for g in "ABC":
            c = x[[ids.index(m) for m, gg in groups.items() if gg == g]].mean(0)
            v = x[ids.index(q)]
            assert got[q][g] == pytest.approx(v @ c / np.linalg.norm(v) / np.linalg.norm(c), abs=1e-9)
    assert top_k_parents({"A": 0.9, "B": 0.1, "C": 0.5}) == ["A", "C"]


@pytest.mark.slow
def test_merged_toy_run(tmp_path_factory):
    from analysis.experiments import merged_models

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("merged")
    cfg = compose_toy("merged_models", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.merged_models.roots = toy_roots(shared, 3)
    results = merged_models.run(cfg)
    out = tmp / "results" / "merged_models"
    assert {"merged_models.md", "merged_models.tex", "merged_models_centered.md", "merged_models.png"} <= {
        p.name for p in out.iterdir()}
    assert len(results["originals"]) == 3 and len(results["soups"]) == 3
    assert results["clustering_accuracy"] == 1.0 and results["n_clusters"] == 6
    for v, t in results["tables"].items():
        assert t["parent_accuracy"] == 1.0, v
        for row in t["rows"]:
            assert row["children"] == row["children_right"] == 2
            assert sorted(row["identified"]) == sorted(row["true_parents"]) and len(row["true_parents"]) == 2
            assert set(row["true_parents"]) <= set(results["originals"])
    for row in results["tables"]["raw"]["rows"]:   # independent equal-scale roots: 1/sqrt(2) and 0
        for o, c in row["mean_cosine"].items():
            assert (abs(c - 2 ** -0.5) < 0.1) if o in row["true_parents"] else (abs(c) < 0.1), (row["merged"], o, c)
