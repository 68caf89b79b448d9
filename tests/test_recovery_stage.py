"""The recovery command end to end on small synthetic forests written as safetensors files.

Synthetic data with a known answer, testing the mechanics only (not evidence for the paper's hypotheses): each
root is a random heavy-tailed (Laplace) weight set; each child adds a dense Gaussian delta to its parent, which
both moves it a little (l2 distance grows along the tree) and lowers its kurtosis (Gaussian noise thins the tails).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.recovery_inputs import forest as make_forest, write_flat, write_truth

SHAPES = {"blocks.0.attn.qkv.weight": (96, 32), "blocks.0.attn.proj.weight": (32, 32),
          "blocks.0.mlp.fc1.weight": (64, 32), "blocks.0.mlp.fc2.weight": (32, 64),
          "blocks.1.attn.qkv.weight": (96, 32), "blocks.1.attn.proj.weight": (32, 32),
          "blocks.1.mlp.fc1.weight": (64, 32), "blocks.1.mlp.fc2.weight": (32, 64),
          "blocks.0.norm1.weight": (32,), "head.weight": (10, 32)}


def synthetic_forest(n_trees: int = 2, children: int = 2, grandchildren: int = 2, seed: int = 0
                     ) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[str, str]]]:
    """Models (id -> tensors) and true edges of `n_trees` trees of depth 2 (1 + c + c*g models each)."""
    return make_forest(SHAPES, n_trees, children, grandchildren, seed, fresh=("head.weight",))


def write_graph(folder: Path, models: dict, edges: list[tuple[str, str]]) -> Path:
    """A data_gen-style graph folder: graph.json (with stages) + models/<id>.safetensors."""
    write_flat(folder / "models", models)
    children = {c for _, c in edges}
    graph = {"nodes": sorted(models), "edges": [list(e) for e in edges],
             "stage": {n: "specialization" if n in children else "generalization" for n in models},
             "meta": {n: {"method": "full"} for n in models}}
    (folder / "graph.json").write_text(json.dumps(graph))
    return folder / "graph.json"


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    models, edges = synthetic_forest()
    base = tmp_path_factory.mktemp("forest")
    return {"models": models, "edges": edges, "flat": write_flat(base / "flat", models),
            "truth": write_truth(base / "truth.json", models, edges)}


def test_stage_recovers_synthetic_forest(forest, cfg_factory, tmp_path, capsys):
    """2 trees x 7 models through run(cfg): perfect recovery, all files written, summary printed."""
    from recovery.stage import run

    cfg = cfg_factory(["+experiment=recover", f"input={forest['flat']}", f"ground_truth={forest['truth']}"])
    result = run(cfg)
    out = tmp_path / "out"
    m = result["metrics"]
    assert m["edge_accuracy"] == 1.0 and m["clustering_accuracy"] == 1.0 and m["root_accuracy"] == 1.0
    assert all(t["accuracy"] == 1.0 for t in m["per_tree"].values()) and set(m["per_tree"]) == {"t0_root", "t1_root"}
    tree = json.loads((out / "tree.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["edge_accuracy"] == 1.0
    assert (out / "tree.png").stat().st_size > 10_000
    assert {(e["parent"], e["child"]) for e in tree["edges"]} == set(forest["edges"])
    assert all(e["distance"] > 0 and e["base_model_relation"] == "finetune" for e in tree["edges"])
    nodes = {n["id"]: n for n in tree["nodes"]}
    assert nodes["t0_c0_g1"]["base_model"] == "t0_c0" and "base_model" not in nodes["t1_root"]
    assert nodes["t1_root"]["root"] and nodes["t1_c1_g0"]["depth"] == 2
    assert {n["cluster"] for n in tree["nodes"]} == {0, 1} and tree["clustering"]["cut_height"] > 0
    assert not any("head" in name for name in tree["layers"])
    assert tree["options"]["tree"]["c"] == 0.3 and tree["seed"] == cfg.seed
    assert len(tree["nodes"][0]["direction_per_layer"]) == len(tree["direction_layers"]) > 0
    printed = capsys.readouterr().out
    assert "2 trees" in printed and "edge accuracy 1.000" in printed and "root t0_root" in printed


def test_recover_without_hydra_known_k_and_no_output(forest):
    """The plain-Python entry point: options as keyword arguments, nothing written without output_dir."""
    from recovery.stage import recover

    result = recover(forest["flat"], cluster={"n_trees": 2}, distance={"metric": "l2"}, quiet=True)
    assert result["paths"] == {} and result["metrics"] is None
    assert {(e["parent"], e["child"]) for e in result["tree"]["edges"]} == set(forest["edges"])
    assert result["tree"]["distance_metric"] == "l2"


def test_ground_truth_id_mismatch(forest, tmp_path):
    """Ids in the ground truth missing from the folder: warning naming the file, scored as missed; none shared: error."""
    from recovery.stage import recover

    models = dict(forest["models"])
    models["t9_ghost"] = {}
    truth = write_truth(tmp_path / "truth.json", models, forest["edges"] + [("t0_root", "t9_ghost")])
    result = recover(forest["flat"], ground_truth=truth, quiet=True)
    assert any("truth.json" in w and "t9_ghost" in w for w in result["warnings"])
    assert result["metrics"]["edge_accuracy"] == pytest.approx(12 / 13)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nodes": ["a", "b"], "edges": [["a", "b"]]}))
    with pytest.raises(ValueError, match="other.json.*none of its"):
        recover(forest["flat"], ground_truth=other, quiet=True)


def test_missing_input_is_a_clear_error(cfg_factory):
    from recovery.stage import run

    with pytest.raises(ValueError, match="no input folder given"):
        run(cfg_factory(["+experiment=recover"]))


@pytest.mark.slow
def test_command_line_on_graph_folder(tmp_path):
    """`python run.py +experiment=recover input=GRAPH_DIR ground_truth=graph.json` as a user would run it."""
    models, edges = synthetic_forest(n_trees=2, children=2, grandchildren=1, seed=1)
    graph = write_graph(tmp_path / "graph", models, edges)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), "+experiment=recover", f"input={graph.parent}",
                          f"ground_truth={graph}", f"output_dir={out}", f"paths.log_dir={tmp_path / 'logs'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "edge accuracy 1.000" in res.stdout
    assert {p.name for p in out.iterdir()} >= {"tree.json", "metrics.json", "tree.png"}
    tree = json.loads((out / "tree.json").read_text())
    assert {n["id"]: n["stage"] for n in tree["nodes"]}["t0_root"] == "generalization"
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "+experiment=recover",
                          f"paths.log_dir={tmp_path / 'logs'}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "no input folder given" in bad.stderr


def test_cost_matrix_follows_the_paper():
    """Hand-checked M = D + lambda (K xor T) on 3 synthetic nodes, lambda = c * sum(D) / n^2."""
    from recovery.mother import cost_matrix, recover_forest

    d = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=float)
    k = np.array([3.0, 2.0, 1.0])  # scores fall along 0 -> 1 -> 2
    spec = np.zeros(3, dtype=bool)
    m, lam = cost_matrix(d, k, spec, c=0.3)
    assert lam == pytest.approx(0.3 * 8 / 9)
    assert m[0, 1] == 1 and m[1, 0] == pytest.approx(1 + lam) and np.isinf(m[0, 0])
    m_gen, _ = cost_matrix(d, k, ~spec, c=0.3)  # all generalization: the penalty flips
    assert m_gen[0, 1] == pytest.approx(1 + lam) and m_gen[1, 0] == 1
    parent, _ = recover_forest(d, k, spec, np.zeros(3, dtype=int))
    assert parent.tolist() == [-1, 0, 1]
    parent, _ = recover_forest(d, k, ~spec, np.zeros(3, dtype=int))
    assert parent.tolist() == [1, 2, -1]
    # a generalization root with specialization children: stage order keeps the root on top
    mixed = np.array([True, False, False])
    m_mixed, _ = cost_matrix(d, k, mixed, stage_order=True)
    assert m_mixed[1, 0] == pytest.approx(1 + lam) and m_mixed[0, 1] == 1
    assert cost_matrix(d, k, mixed, stage_order=False)[0][1, 0] == 1
    # two clusters are recovered independently; a singleton cluster is its own root
    parent, lams = recover_forest(np.pad(d, ((0, 1), (0, 1)), constant_values=9.0), np.append(k, 5.0),
                                  np.zeros(4, dtype=bool), np.array([0, 0, 0, 1]))
    assert parent.tolist() == [-1, 0, 1, -1] and lams[1] == 0.0


def test_lora_forest_uses_ranks_and_names_adapters(tmp_path):
    """Synthetic LoRA-V forest (recovery.synthetic: merged rank 2/4/6 deltas on qkv): auto picks lora_rank,
    every edge is an adapter, the tree is exact; direction from the LoRA-tuned (q, k, v) layers as in the paper."""
    from recovery.stage import recover
    from recovery.synthetic import vit_shapes, write_tree

    children = {"r0": ["r0a", "r0b"], "r0a": ["r0a1", "r0a2"], "r0b": ["r0b1"], "r1": ["r1a", "r1b"], "r1a": ["r1a1"]}
    write_tree(tmp_path / "g", vit_shapes(dim=32, depth=2), children, ["r0", "r1"], seed=0, method="lora",
               ranks=(2, 4, 6), scale=0.04)
    result = recover(tmp_path / "g", ground_truth=tmp_path / "g" / "graph.json", output_dir=tmp_path / "out",
                     direction={"kinds": ["query", "key", "value"]}, plot=False, quiet=True)
    assert result["tree"]["distance_metric"] == "lora_rank"
    assert result["metrics"]["edge_accuracy"] == 1.0 and result["metrics"]["clustering_accuracy"] == 1.0
    assert {e["base_model_relation"] for e in result["tree"]["edges"]} == {"adapter"}
    assert all(n.get("base_model_relation", "adapter") == "adapter" for n in result["tree"]["nodes"])
    assert set(result["paths"]) == {"tree", "metrics", "graphml", "dot", "model_cards"}
