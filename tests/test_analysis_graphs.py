"""analysis.graphs: composing data_gen configs, building vs reusing graphs, synthetic graphs, graph specs.

data_gen's build_graph is replaced by a recorder here (building real graphs is data_gen's own test suite);
the synthetic graphs are random weights with a known heritage.
"""
from __future__ import annotations

import numpy as np
import pytest

import data_gen.graph
from analysis import graphs
from recovery.synthetic import write_synthetic_graph


@pytest.fixture
def fake_build(monkeypatch):
    calls = []

    def build(cfg, **kw):
        calls.append(cfg)
        write_synthetic_graph(cfg.data_gen.dir, trees=1, depth=1, children=1)
        return {"complete": True}
    monkeypatch.setattr(data_gen.graph, "build_graph", build)
    return calls


def test_graph_cfg_composes_named_config(cfg_factory, tmp_path):
    cfg = cfg_factory()
    sub = graphs.graph_cfg(cfg, "ft_mini")
    assert sub.data_gen.name == "ft_mini" and "full" in sub.data_gen.methods
    assert sub.data_gen.dir == str(tmp_path / "graphs" / "ft_mini")          # our paths, not the defaults
    var = graphs.graph_cfg(cfg, "ft_mini", depth=1)
    assert var.data_gen.depth == 1 and var.data_gen.name.startswith("ft_mini-") and var.data_gen.name != "ft_mini"
    with pytest.raises(FileNotFoundError, match="no_such_graph"):
        graphs.graph_cfg(cfg, "no_such_graph")


def test_ensure_graph_builds_once_then_reuses(cfg_factory, fake_build):
    cfg = cfg_factory()
    first = graphs.ensure_graph(cfg, "ft_mini")
    again = graphs.ensure_graph(cfg, "ft_mini")
    assert first == again and len(fake_build) == 1
    graphs.ensure_graph(cfg_factory(["analysis.reuse_graphs=false"]), "ft_mini")
    assert len(fake_build) == 2                                           # handed to data_gen to verify/resume


def test_incomplete_graph_is_rebuilt(cfg_factory, fake_build):
    cfg = cfg_factory()
    path = graphs.ensure_graph(cfg, "ft_mini")
    (path / "models" / "root0.safetensors").unlink()
    assert not graphs.is_complete(path)
    graphs.ensure_graph(cfg, "ft_mini")
    assert len(fake_build) == 2


def test_resolve_graph_specs(cfg_factory, tmp_path):
    cfg = cfg_factory()
    syn = graphs.resolve_graph(cfg, {"synthetic": {"name": "s", "trees": 2, "depth": 1, "children": 3}})
    g = graphs.read_graph(syn)
    assert len(g["nodes"]) == 8 and len(g["edges"]) == 6 and g["stage"]["root0"] == "generalization"
    assert graphs.resolve_graph(cfg, {"path": str(syn)}) == syn
    with pytest.raises(FileNotFoundError, match="graph.json"):
        graphs.resolve_graph(cfg, {"path": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="graph spec"):
        graphs.resolve_graph(cfg, {"what": 1})


def test_synthetic_graph_deltas(tmp_path):
    """LoRA children differ from their parent by the drawn rank on qkv only; full children everywhere."""
    from safetensors.numpy import load_file

    d = write_synthetic_graph(tmp_path / "g", trees=1, depth=1, children=2, method="lora", ranks=[3])
    parent, child = (load_file(str(d / "models" / f"{n}.safetensors")) for n in ("root0", "root0-0"))
    assert np.linalg.matrix_rank(child["blocks.0.attn.qkv.weight"] - parent["blocks.0.attn.qkv.weight"]) == 3
    assert np.array_equal(child["blocks.0.mlp.fc1.weight"], parent["blocks.0.mlp.fc1.weight"])
    r = write_synthetic_graph(tmp_path / "r", trees=1, depth=1, children=1, arch="resnet")
    assert load_file(str(r / "models" / "root0.safetensors"))["layer1.0.conv2.weight"].ndim == 4
    with pytest.raises(ValueError, match="method"):
        write_synthetic_graph(tmp_path / "x", method="adapter")
