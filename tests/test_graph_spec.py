"""Graph specification: every graph config composes, and its node jobs are deterministic and obey the rules."""
from __future__ import annotations

import copy
import functools
import re
from collections import Counter

import pytest
from omegaconf import OmegaConf

from common.seed import derive_seed
from data_gen.spec import build_spec, sample, task_key
from tests.conftest import ROOT, compose

GRAPHS = sorted(p.stem for p in (ROOT / "conf" / "data_gen").glob("*.yaml") if p.stem != "base")
PAPER = ["lora_v", "lora_f", "ft", "mixed", "deep", "resnet"]
# (roots, children per level) of each paper graph (paper 6.1 / Appendix B)
SHAPES = {"lora_v": (5, [4, 4]), "lora_f": (5, [4, 4]), "ft": (5, [4, 4]), "mixed": (5, [4, 4]),
          "deep": (1, [3, 3, 3, 3]), "resnet": (1, [4, 4])}


@functools.lru_cache(maxsize=None)
def _graph_cfg(name: str, overrides: tuple[str, ...]) -> dict:
    cfg = compose([f"data_gen={name}", "paths.graphs_dir=/nonexistent/graphs", *overrides], output_dir="/nonexistent")
    return OmegaConf.to_container(cfg.data_gen, resolve=True)


def graph_cfg(name: str, *overrides: str) -> dict:
    """The resolved data_gen config of graph `name` (composed once per test session)."""
    return copy.deepcopy(_graph_cfg(name, overrides))


def test_paper_and_mini_configs_exist():
    for name in PAPER:
        assert name in GRAPHS and f"{name}_mini" in GRAPHS, name
    assert "default" in GRAPHS


@pytest.mark.parametrize("name", GRAPHS)
def test_spec_deterministic_and_well_formed(name):
    dg = graph_cfg(name)
    jobs = build_spec(dg, seed=0)
    assert jobs == build_spec(dg, seed=0)
    by_id = {j["id"]: j for j in jobs}
    assert len(by_id) == len(jobs)
    methods = {m: b for m, b in dg["methods"].items() if b is not None}
    for job in jobs:
        if job["parent"] is None:
            assert job["level"] == 0 and job["recipe"]["method"] == "pretrained"
            continue
        parent = by_id[job["parent"]]
        assert jobs.index(parent) < jobs.index(job), "parents come first"
        assert job["level"] == parent["level"] + 1 and job["root"] == parent["root"]
        assert re.fullmatch(re.escape(parent["id"]) + r"-\d+", job["id"])
        assert task_key(job["task"]) != task_key(parent["task"]), "a child's task differs from its parent's"
        recipe, block = job["recipe"], methods[job["recipe"]["method"]]
        assert job["task"] in block["tasks"]
        assert recipe["seed"] == derive_seed(0, "train", job["id"])
        for key in ("lr", "epochs", "batch_size", "lora_rank", "lora_alpha"):
            if key not in block:
                continue
            spec = block[key]
            if isinstance(spec, dict) and "choices" in spec:
                assert recipe[key] in spec["choices"], (key, recipe[key])
            elif isinstance(spec, dict) and "range" in spec:
                assert spec["range"][0] <= recipe[key] <= spec["range"][1], (key, recipe[key])
            else:
                assert recipe[key] == spec
        if recipe["method"] == "full":
            assert not any(k.startswith("lora_") for k in recipe), "full fine-tunes carry no LoRA keys"
    seeds = [j["recipe"]["seed"] for j in jobs if j["parent"]]
    assert len(set(seeds)) == len(seeds), "every model has its own seed"


@pytest.mark.parametrize("name", PAPER)
def test_paper_graph_shapes(name):
    """Counts per level as in the paper (105 models per sub-graph, Deep 121, ResNet 21)."""
    n_roots, children = SHAPES[name]
    for cfg_name in (name, f"{name}_mini"):
        counts = Counter(j["level"] for j in build_spec(graph_cfg(cfg_name), seed=0))
        expected = [n_roots]
        for c in children:
            expected.append(expected[-1] * c)
        assert [counts[i] for i in range(len(expected))] == expected, cfg_name
    assert sum(expected) == {"deep": 121, "resnet": 21}.get(name, 105)


def test_paper_recipes_follow_appendix_b():
    """Tables 2 and 3: LoRA-V samples rank and alpha, LoRA-F fixes 16, FT is full FT, Mixed mixes both."""
    lora_v = build_spec(graph_cfg("lora_v"), seed=0)[5:]
    assert {j["recipe"]["method"] for j in lora_v} == {"lora"}
    assert {j["recipe"]["lora_rank"] for j in lora_v} == {8, 16, 32, 64}
    assert {j["recipe"]["lr"] for j in lora_v} == {6e-3, 9e-3, 2e-4, 5e-4}
    assert all(10 <= j["recipe"]["epochs"] <= 20 and j["recipe"]["batch_size"] == 128 for j in lora_v)
    lora_f = build_spec(graph_cfg("lora_f"), seed=0)[5:]
    assert {(j["recipe"]["lora_rank"], j["recipe"]["lora_alpha"]) for j in lora_f} == {(16, 16)}
    ft = build_spec(graph_cfg("ft"), seed=0)[5:]
    assert {j["recipe"]["method"] for j in ft} == {"full"}
    assert all(2 <= j["recipe"]["epochs"] <= 5 and j["recipe"]["batch_size"] == 64 for j in ft)
    assert {j["task"].split("/")[0] for j in ft} == {"vtab10k"}
    mixed = Counter(j["recipe"]["method"] for j in build_spec(graph_cfg("mixed"), seed=0)[5:])
    assert mixed["full"] > 20 and mixed["lora"] > 20
    assert {j["recipe"].get("lora_rank") for j in build_spec(graph_cfg("mixed"), seed=0)[5:]} == {None, 16}


def test_node_job_depends_only_on_seed_and_id():
    """Growing the graph elsewhere leaves existing nodes' jobs unchanged; another seed changes them."""
    small = build_spec(_set(graph_cfg("lora_v_mini"), "children", 2), seed=3)
    big = {j["id"]: j for j in build_spec(_set(graph_cfg("lora_v_mini"), "children", 3), seed=3)}
    assert all(big[j["id"]] == j for j in small)
    other = {j["id"]: j for j in build_spec(_set(graph_cfg("lora_v_mini"), "children", 2), seed=4)}
    assert any(other[j["id"]]["recipe"] != j["recipe"] for j in small if j["parent"])


def test_sample_values():
    import random

    rng = random.Random(0)
    assert sample(5, rng) == 5 and sample([1, 2], rng) == [1, 2]
    assert {sample({"choices": [1, 2, 3]}, rng) for _ in range(50)} == {1, 2, 3}
    assert {sample({"range": [2, 4]}, rng) for _ in range(50)} == {2, 3, 4}
    floats = [sample({"range": [0.5, 1.0]}, rng) for _ in range(200)]   # uniform on [0.5, 1]: spans it, stays in
    assert all(isinstance(x, float) and 0.5 <= x <= 1.0 for x in floats) and min(floats) < 0.55 < 0.95 < max(floats)
    assert 0.7 < sum(floats) / len(floats) < 0.8
    with pytest.raises(ValueError, match="choices"):
        sample({"choice": [1]}, rng)


def _set(dg: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    node = dg
    for key in path:
        node = node[key]
    node[last] = value
    return dg


@pytest.mark.parametrize("key, value, message", [
    ("methods.lora.lr_choices", [1], "data_gen.methods.lora: unknown option 'lr_choices'"),
    ("methods.full", {"tasks": ["builtin/a", "builtin/b"], "lr": 1, "epochs": 1, "batch_size": 2, "lora_rank": 4},
     "data_gen.methods.full: unknown option 'lora_rank'"),
    ("methods.lora.epochs", None, "missing"),
    ("roots", [{"id": "a-b", "source": "builtin:x"}], "root id"),
    ("roots", [{"id": "a"}], "no 'source'"),
    ("methods.lora.tasks", ["builtin/a", "other/a"], "needs >= 2 datasets"),
    ("children", [2], "one per level"),
    ("methods.prompt", {"tasks": ["a"]}, "data_gen.methods: unknown option 'prompt'"),
])
def test_bad_config_fails_clearly(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_spec(_set(graph_cfg("lora_v_mini"), key, value), seed=0)


@pytest.mark.parametrize("name", GRAPHS)
def test_config_tasks_exist(name):
    """Every task a graph config names is one data_gen.tasks provides (roots' pretraining sets included)."""
    from data_gen.tasks import list_tasks

    dg = graph_cfg(name)
    named = [t for block in dg["methods"].values() if block for t in block["tasks"]]
    named += [r["task"] for r in dg["roots"] if str(r.get("task", "")).startswith("pretrain/")]
    for task in named:
        assert task in list_tasks(task.split("/")[0]), f"{name}: unknown task {task}"
