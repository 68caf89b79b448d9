"""Pruning (Table 4) and quantization (Table 5): the weight transforms, derived graph copies, and toy-scale runs.

Toy runs use synthetic graphs (recovery.synthetic.write_synthetic_graph), on which the unmodified graph is recovered
exactly: the tests check that baseline, the counts behind each accuracy and the transforms, not the paper's claims.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from analysis import stage
from analysis.experiments.pruning import prune_tensor
from analysis.experiments.quantization import int8_rowwise_torch, quantizer
from analysis.graphs import derived_graph, read_graph
from common.paths import from_portable
from recovery.synthetic import write_synthetic_graph


def _results(tmp_path, name):
    return json.loads((tmp_path / "results" / name / "results.json").read_text())


def test_prune_tensor_zeroes_the_smallest():
    w = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10) * torch.tensor([1.0, -1.0]).repeat(5)
    p = prune_tensor(w, 0.3)
    assert int((p == 0).sum()) == 30
    assert (p[p != 0].abs().min() > 30) and torch.equal(p[p != 0], w[p != 0])
    assert torch.equal(prune_tensor(torch.ones(5), 0.9), torch.ones(5))     # 1-D tensors are left alone


def test_int8_round_trip_is_close_and_per_row():
    w = torch.randn(16, 40) * torch.logspace(-3, 0, 16)[:, None]
    q = int8_rowwise_torch(w)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((q - w).abs() <= step / 2 + 1e-7).all()
    assert len(torch.unique(torch.round(q[0] / step[0]))) <= 255
    assert torch.equal(quantizer("int8", "torch")("b", torch.ones(3)), torch.ones(3))
    assert quantizer("fp16", "torch")("w", torch.tensor([1 + 2**-12])).item() == 1.0


def test_bitsandbytes_matches_torch_round_trip():
    """bitsandbytes' int8_vectorwise_quant and the torch fallback agree (up to rounding of exact ties)."""
    pytest.importorskip("bitsandbytes")
    from analysis.experiments.quantization import int8_rowwise_bnb

    w = torch.randn(32, 64) * 0.02
    a, b = int8_rowwise_torch(w.half().float()), int8_rowwise_bnb(w)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((a - b).abs() <= step * 1.01).all()
    assert (a == b).float().mean() > 0.95


def test_derived_graph_links_and_caches(tmp_path):
    src = write_synthetic_graph(tmp_path / "src", trees=1, depth=1, children=2)
    dst = tmp_path / "dst"
    derived_graph(src, dst, lambda n, t: t * 0, tag={"zero": True}, nodes={"root0-0"})
    g = read_graph(dst)
    assert g["derived"]["nodes"] == ["root0-0"] and g["meta"]["root0-0"]["sha256"] != g["meta"]["root0-0"].get(
        "source_sha256")
    assert (dst / "models" / "root0.safetensors").stat().st_ino == (src / "models" / "root0.safetensors").stat().st_ino
    stamp = (dst / "graph.json").stat().st_mtime_ns
    derived_graph(src, dst, lambda n, t: t * 0, tag={"zero": True}, nodes={"root0-0"})
    assert (dst / "graph.json").stat().st_mtime_ns == stamp                    # reused, not rewritten
    derived_graph(src, dst, lambda n, t: t * 0, tag={"zero": True}, nodes={"root0-1"})
    assert read_graph(dst)["derived"]["nodes"] == ["root0-1"]                  # a different tag/set rebuilds


def test_pruning_toy(cfg_factory, tmp_path, saved_figures):
    stage.run(cfg_factory(["+experiment=pruning", "scale=toy"]))
    rows = _results(tmp_path, "pruning")["rows"]
    assert [r["amount"] for r in rows] == [0.0, 0.5, 0.9]
    assert rows[0]["edge_accuracy"] == 1.0 and rows[0]["pruned_params"] == 0    # unpruned synthetic graph: exact
    assert rows[1]["edge_accuracy"] >= 11 / 12 and rows[2]["edge_accuracy"] >= 0.5  # floors (seen: 1.0, 0.917)
    for r in rows:
        assert r["n_models"] == 14 and round(r["edge_accuracy"] * 12, 9) == round(r["edge_accuracy"] * 12)  # k/12
        total = r["pruned_params"] + r["kept_params"]
        assert abs(r["pruned_params"] - r["amount"] * total) <= 0.01 * total   # the asked fraction is pruned
    assert (tmp_path / "results" / "pruning" / "pruning.png").is_file()
    (fig,) = saved_figures                  # the line drawn is ours: pruned % against the accuracies above
    drawn = fig.axes[0].lines[0].get_xydata().tolist()
    assert drawn == [[pct, r["edge_accuracy"]] for pct, r in zip((0, 50, 90), rows)]


def test_quantization_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=quantization", "scale=toy"]))
    res = _results(tmp_path, "quantization")
    assert res["int8_backend"] == "torch" and res["none"]["edge_accuracy"] == 1.0   # unquantized synthetic: exact
    runs = res["runs"]
    assert [(r["label"], r["repeat"]) for r in runs] == [("fp16", 0), ("fp16", 1), ("int8", 0), ("int8", 1)]
    assert all(r["edge_accuracy"] == 1.0 for r in runs)      # the synthetic deltas dwarf the rounding steps
    for r in runs:          # the models said quantized are, and only they: read back, fp16 models are fp16 values
        g = read_graph(from_portable(r["graph_dir"]))
        assert len(g["derived"]["nodes"]) == r["n_quantized"] and 0 < r["n_quantized"] < 14
        if r["label"] == "fp16":
            for node in g["nodes"]:
                w = load_file(str(from_portable(r["graph_dir"]) / "models" / f"{node}.safetensors"))["blocks.0.mlp.fc1.weight"]
                assert np.array_equal(w, w.astype(np.float16).astype(np.float32)) == (node in g["derived"]["nodes"])
    md = (tmp_path / "results" / "quantization" / "quantization.md").read_text()
    assert "±" in md and "int8" in md
    assert (tmp_path / "results" / "quantization" / "quantization.png").is_file()
