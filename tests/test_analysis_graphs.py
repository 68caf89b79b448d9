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
    class Calls(list):
        stale: list[str]
    calls = Calls()

    def build(cfg, **kw):
        calls.append(cfg)
        write_synthetic_graph(cfg.data_gen.dir, trees=1, depth=1, children=1)
        return {"complete": True}
    monkeypatch.setattr(data_gen.graph, "build_graph", build)
    monkeypatch.setattr(data_gen.graph, "stale_roots", lambda cfg: stale)
    monkeypatch.setattr(data_gen.graph, "changed_jobs", lambda cfg: changed)
    stale: list[str] = []
    changed: list[str] = []
    calls.stale, calls.changed = stale, changed
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


def test_graph_with_a_rebuilt_root_is_not_reused(cfg_factory, fake_build):
    """A complete graph whose root source changed (data_gen.graph.stale_roots) goes back to data_gen."""
    cfg = cfg_factory()
    graphs.ensure_graph(cfg, "ft_mini")
    fake_build.stale.append("vit_a1")
    graphs.ensure_graph(cfg, "ft_mini")
    assert len(fake_build) == 2


def test_graph_with_a_changed_recipe_is_not_reused(cfg_factory, fake_build):
    """A complete graph whose nodes the config now plans differently (data_gen.graph.changed_jobs: an edited
    recipe) goes back to data_gen, which retrains what changed."""
    cfg = cfg_factory()
    graphs.ensure_graph(cfg, "ft_mini")
    fake_build.changed.append("vit_a1-0")
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


def test_pretraining_chains_relink_when_a_root_is_rebuilt(cfg_factory, tmp_path, monkeypatch):
    """The checkpoint chain graph is reused while the checkpoints are the same bytes, and relinked (stale model
    files gone) when the root was rebuilt with other checkpoints."""
    import torch
    from safetensors.torch import save_file

    import data_gen.roots
    from common.io import sha256_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()

    def write(steps, value):
        for k in steps:
            save_file({"w": torch.full((2, 2), float(value + k))}, str(ckpt / f"r_{k}.safetensors"))
        monkeypatch.setattr(data_gen.roots, "root_checkpoints",
                            lambda root, **kw: [(k, ckpt / f"r_{k}.safetensors") for k in steps])

    cfg = cfg_factory()
    write([0, 100, 200], 0.0)
    first = graphs.pretraining_chains(cfg, ["r"], every=100)
    assert graphs.read_graph(first)["edges"] == [["r-s0", "r-s100"], ["r-s100", "r-s200"]]
    stamp = (first / "graph.json").stat().st_mtime_ns
    assert graphs.pretraining_chains(cfg, ["r"], every=100) == first
    assert (first / "graph.json").stat().st_mtime_ns == stamp                 # reused, not relinked
    write([0, 100], 1.0)                                                        # rebuilt root, shorter chain
    graphs.pretraining_chains(cfg, ["r"], every=100)
    g = graphs.read_graph(first)
    assert g["nodes"] == ["r-s0", "r-s100"] and sorted(p.name for p in (first / "models").iterdir()) == [
        "r-s0.safetensors", "r-s100.safetensors"]
    assert g["meta"]["r-s100"]["sha256"] == sha256_file(ckpt / "r_100.safetensors")
