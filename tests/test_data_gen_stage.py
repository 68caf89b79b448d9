"""The data_gen stage through run.py: one small graph built (synthetic built-in data, a few steps), summary returned."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common.io import read_json
from tests.toy_runs import is_count_of
from tests.conftest import ROOT
from tests.test_graph_build import TINY, tiny_cfg

ONE_TREE = ["data_gen.depth=1", "data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a}]"]


def test_stage_builds_and_summarises(tmp_path):
    import run

    cfg = tiny_cfg(tmp_path, "stages=[data_gen]", *ONE_TREE)
    out = run.run_stages(cfg)["data_gen"]
    assert out["complete"] and out["built"] == ["vit_a1", "vit_a1-0"] and out["skipped"] == []
    graph = read_json(out["graph_json"])
    assert graph["edges"] == [["vit_a1", "vit_a1-0"]]
    accs = [m["val_accuracy"] for m in graph["meta"].values() if m.get("val_accuracy") is not None]
    assert accs and out["mean_val_accuracy"] == pytest.approx(sum(accs) / len(accs))  # the nodes' own, averaged
    assert is_count_of(graph["meta"]["vit_a1-0"]["val_accuracy"], 64)                 # TINY: n_val=64
    again = run.run_stages(cfg)["data_gen"]
    assert again["built"] == [] and again["skipped"] == ["vit_a1", "vit_a1-0"]


@pytest.mark.slow
def test_cli_builds_a_mini_graph_experiment(tmp_path):
    """`python run.py +experiment=graph_lora_v_mini` (cut to one tree, one child, a few steps) builds it."""
    tiny = [o for o in TINY if not o.startswith(("data_gen=", "data_gen.name", "data_gen.roots"))
            and ".full." not in o]
    args = ["+experiment=graph_lora_v_mini", f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.graphs_dir={tmp_path / 'graphs'}", f"paths.data_dir={tmp_path / 'data'}",
            *tiny, *ONE_TREE]
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    graph = read_json(tmp_path / "graphs" / "lora_v_mini" / "graph.json")
    assert graph["complete"] and graph["nodes"] == ["vit_a1", "vit_a1-0"]
    assert graph["meta"]["vit_a1-0"]["method"] == "lora"
