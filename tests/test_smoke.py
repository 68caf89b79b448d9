"""Smoke runs (`smoke=true`, data_gen/smoke.py): the paper configs' small offline check version.

Config and job transforms are pure; the mock VTAB loads use tensorflow-datasets' random mock data; the end-to-end
run is `python run.py +experiment=graph_ft smoke=true` on CPU through the real ViT-B/16 (random init, 1 + 1 tree,
1 step of batch 2 on 2 mock images)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from common.io import read_json
from data_gen.graph import graph_config
from data_gen.smoke import consistent_objects, mock_vtab, random_root, smoke_config
from data_gen.spec import build_spec
from tests.conftest import ROOT, compose

HAS_TF = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tensorflow_datasets"))
needs_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow and tensorflow-datasets are not installed")
PAPER = ("lora_v", "lora_f", "ft", "mixed", "deep", "resnet")


@pytest.mark.parametrize("name", PAPER)
def test_smoke_config_of_each_paper_graph(name, tmp_path):
    """Own folder, one root replaced by a random init of its architecture, a 1 + 2 + 4 tree whose nodes are the
    real graph's nodes (same task, method, recipe and seed) capped to a few steps on mock VTAB data."""
    real = compose([f"data_gen={name}", f"paths.graphs_dir={tmp_path}"])
    dg = graph_config(compose([f"data_gen={name}", f"paths.graphs_dir={tmp_path}", "smoke=true"]))
    assert dg["name"] == f"{name}_smoke" and dg["dir"] == str(tmp_path / f"{name}_smoke")
    (root,) = dg["roots"]
    arch = real.data_gen.roots[0].source.removeprefix("timm:")
    assert root["source"].startswith(f"random:{arch}:") and root["id"] == real.data_gen.roots[0].id
    jobs = build_spec(dg, 0)
    real_jobs = {j["id"]: j for j in build_spec(graph_config(real), 0)}
    assert [j["level"] for j in jobs] == [0, 1, 1, 2, 2, 2, 2]
    for job in jobs[1:]:
        twin = real_jobs[job["id"]]
        assert (job["task"], job["recipe"]["method"], job["recipe"]["seed"], job["recipe"]["lr"]) == \
            (twin["task"], twin["recipe"]["method"], twin["recipe"]["seed"], twin["recipe"]["lr"])
        assert job["recipe"]["max_steps"] == 3 and job["recipe"]["batch_size"] == 8
        assert job["data"] == {**twin["data"], "mock": 16}


def test_smoke_keeps_local_roots_and_needs_an_arch_for_unknown_hf_roots(tmp_path):
    """Built-in and local-file roots need no hub and are kept; an hf: root of unknown architecture fails clearly."""
    dg = {"name": "g", "dir": str(tmp_path / "g"), "seed": 0, "smoke": {"roots": 3},
          "roots": [{"id": "a", "source": "builtin:vit_a1"}, {"id": "b", "source": "/x/b.safetensors"},
                    {"id": "c", "source": "hf:org/thing", "arch": "vit_small_patch16_224"}]}
    out = smoke_config(dg)
    assert [r["source"] for r in out["roots"][:2]] == ["builtin:vit_a1", "/x/b.safetensors"]
    assert out["roots"][2]["source"].startswith("random:vit_small_patch16_224:") and "arch" not in out["roots"][2]
    dg["roots"][2].pop("arch")
    with pytest.raises(ValueError, match="data_gen.smoke.archs"):
        smoke_config(dg)
    with pytest.raises(ValueError, match="data_gen.smoke: unknown option 'step'"):
        smoke_config({**dg, "smoke": {"step": 1}})


def test_random_root_is_a_pure_function_of_its_source():
    """Same source, same weights; another seed, other weights; the global torch random state is untouched."""
    state = torch.random.get_rng_state()
    arch, a = random_root("random:vit_mini:7")
    assert torch.equal(torch.random.get_rng_state(), state)
    _, b = random_root("random:vit_mini:7")
    _, c = random_root("random:vit_mini:8")
    assert arch == "vit_mini" and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="random:"):
        random_root("random:vit_mini")


def test_consistent_objects_fixes_mock_object_lists():
    """Synthetic mock example: per-object fields of different lengths become one length within 3..10."""
    ex = {"image": np.zeros((4, 4, 3), np.uint8),
          "objects": {"type": np.arange(2), "location": np.ones((30, 3)), "bbox": np.ones((7, 4))}}
    out = consistent_objects(ex)
    assert {len(v) for v in out["objects"].values()} == {3}
    assert out["image"] is ex["image"] and consistent_objects({"label": 1}) == {"label": 1}


@pytest.mark.slow
@needs_tf
def test_mock_vtab_loads_every_paper_task():
    """Every VTAB task of the paper configs loads from the mock with labels in range (random mock data)."""
    tasks = sorted({t for name in PAPER for block in compose([f"data_gen={name}"]).data_gen.methods.values()
                    if block is not None for t in block.tasks})
    from data_gen.graph import _default_load_task

    for task in tasks:
        data = _default_load_task(task, mock=4, image_size=16, seed=0, data_dir="/nonexistent")
        assert data.x_train.shape == (4, 3, 16, 16) and data.y_val.shape == (4,), task
        assert 0 <= int(data.y_train.min()) and int(data.y_train.max()) < data.num_classes, task


@needs_tf
@pytest.mark.slow
def test_smoke_run_of_graph_ft_on_cpu_through_vit_b(tmp_path):
    """`python run.py +experiment=graph_ft smoke=true`, offline on CPU: a random-init ViT-B/16 root and one
    full fine-tune (1 step, batch 2, 2 mock images at 224 px); the real graph folder is not touched."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["+experiment=graph_ft", "smoke=true", "data_gen.progress=false", f"paths.graphs_dir={tmp_path / 'g'}",
            f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}", "data_gen.smoke.depth=1",
            "data_gen.smoke.children=1", "data_gen.smoke.steps=1", "data_gen.smoke.batch_size=2",
            "data_gen.smoke.examples=2"]
    res = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "g" / "ft").exists() and not (tmp_path / "data").exists()
    graph = read_json(tmp_path / "g" / "ft_smoke" / "graph.json")
    assert graph["complete"] and graph["nodes"] == ["in1k", "in1k-0"]
    root, child = graph["meta"]["in1k"], graph["meta"]["in1k-0"]
    assert root["arch"] == "vit_base_patch16_224.orig_in21k_ft_in1k" and root["source"].startswith("random:")
    assert (child["method"], child["steps"], child["data_mock"], child["batch_size"]) == ("full", 1, 2, 2)
    assert (child["accelerator"], child["precision"]) == ("cpu", "32-true")
    assert child["task"].startswith("vtab10k/") and child["val_accuracy"] in (0.0, 0.5, 1.0)  # a count of 2 mock images
    with safe_open(str(tmp_path / "g" / "ft_smoke" / child["weights"]), framework="pt") as f:
        assert f.get_slice("blocks.11.attn.qkv.weight").get_shape() == [2304, 768]
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
