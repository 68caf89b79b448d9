"""Graph builds end to end with the real roots, tasks and fine-tuning: resume, skip, force, tamper, determinism.

Synthetic data: the built-in tasks (a few hundred generated images) and a few training steps per node.
"""
from __future__ import annotations

import time

import pytest

from common.io import read_json, sha256_file
from data_gen.graph import build_graph, changed_jobs, is_done, stale_roots, weights_path
from tests.toy_runs import is_count_of
from tests.conftest import compose

# 2 trees x 3 models (root -> child -> grandchild), each fine-tune full or LoRA, a few steps on small sets.
TINY = ["data_gen=default", "data_gen.name=tiny", "data_gen.depth=2", "data_gen.children=1", "data_gen.progress=false",
        "data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a},"
        " {id: vit_b1, source: 'builtin:vit_b1', task: pretrain/mix_b}]",
        *(f"++data_gen.methods.{m}.{k}={v}" for m in ("full", "lora")
          for k, v in (("max_steps", 3), ("epochs", 1), ("batch_size", 32), ("n_train", 96), ("n_val", 64)))]


def tiny_cfg(tmp, *extra: str):
    return compose([f"paths.graphs_dir={tmp / 'graphs'}", f"paths.data_dir={tmp / 'data'}",
                    *TINY, *extra], output_dir=tmp / "out")


def hashes(graph: dict) -> dict[str, str]:
    return {n: graph["meta"][n]["sha256"] for n in graph["nodes"]}


class Counting:
    """Wraps data_gen's finetune: counts calls and raises on call number `fail_at` (a simulated crash)."""

    def __init__(self, fail_at: int | None = None):
        from data_gen.finetune import finetune
        self.finetune, self.fail_at, self.calls = finetune, fail_at, []

    def __call__(self, **kwargs):
        if self.fail_at is not None and len(self.calls) + 1 == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(kwargs["node_id"])
        return self.finetune(**kwargs)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The tiny graph built once, uninterrupted."""
    tmp = tmp_path_factory.mktemp("baseline")
    summary = build_graph(tiny_cfg(tmp))
    return tmp, summary, read_json(summary["graph_json"])


@pytest.mark.slow
def test_tiny_graph_end_to_end(baseline):
    tmp, summary, graph = baseline
    assert summary["complete"] and len(summary["built"]) == 6 and summary["skipped"] == []
    assert sorted(graph["nodes"]) == ["vit_a1", "vit_a1-0", "vit_a1-0-0", "vit_b1", "vit_b1-0", "vit_b1-0-0"]
    assert sorted(map(tuple, graph["edges"])) == [("vit_a1", "vit_a1-0"), ("vit_a1-0", "vit_a1-0-0"),
                                                  ("vit_b1", "vit_b1-0"), ("vit_b1-0", "vit_b1-0-0")]
    assert graph["stage"]["vit_a1"] == "generalization" and graph["stage"]["vit_a1-0-0"] == "specialization"
    assert graph["num_threads"] >= 1 and graph["seed"] == 0 and graph["config"]["name"] == "tiny"
    assert "torch" in graph["versions"]
    gdir = tmp / "graphs" / "tiny"
    for node in graph["nodes"]:
        meta = graph["meta"][node]
        assert sha256_file(gdir / meta["weights"]) == meta["sha256"]
        for key in ("task", "method", "lora_rank", "lora_alpha", "lr", "epochs", "seed", "parent", "val_accuracy"):
            assert key in meta, (node, key)
        if graph["stage"][node] == "specialization":
            assert is_count_of(meta["val_accuracy"], 64) and meta["steps"] == 3   # TINY: n_val=64, max_steps=3
            assert meta["task"] != graph["meta"][meta["parent"]]["task"]
            assert meta["parent_sha256"] == graph["meta"][meta["parent"]]["sha256"]
            if meta["method"] == "lora":
                assert (gdir / meta["adapter"]).is_dir()


@pytest.mark.slow
def test_graph_times_reads_the_node_records(baseline, tmp_path):
    """scripts/graph_times.py: one row per graph and method, counts and times from the nodes' own records."""
    import subprocess
    import sys
    from pathlib import Path

    tmp, summary, graph = baseline
    gdir, out = Path(summary["graph_dir"]), tmp_path / "times.md"
    run = subprocess.run([sys.executable, "scripts/graph_times.py", str(gdir), "--out", str(out)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert out.read_text() == run.stdout
    rows = [line.split(" | ") for line in run.stdout.splitlines()[2:]]
    children = [n for n in graph["nodes"] if graph["meta"][n]["parent"] is not None]
    methods = {graph["meta"][n]["method"] for n in children}
    assert sorted(r[1] for r in rows) == sorted(methods)
    assert sum(int(r[2]) for r in rows) == len(children) == 4
    assert all(r[3] == "3" for r in rows)   # max_steps of every tiny fine-tune
    bad = subprocess.run([sys.executable, "scripts/graph_times.py", str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 2 and "no nodes/ folder" in bad.stderr


@pytest.mark.slow
def test_parallel_workers_give_identical_hashes(baseline, tmp_path):
    """One level's nodes built in 2 worker processes or one after another: the same weights, bit for bit."""
    tmp, summary, graph = baseline
    serial = build_graph(tiny_cfg(tmp_path, "data_gen.workers=1"))
    parallel = build_graph(tiny_cfg(tmp_path / "p", "data_gen.workers=2"))
    assert serial["workers"] == 1 and parallel["workers"] == 2
    assert hashes(read_json(serial["graph_json"])) == hashes(read_json(parallel["graph_json"])) == hashes(graph)


@pytest.mark.slow
def test_rerun_skips_everything(baseline):
    tmp, _, graph = baseline
    counting = Counting()
    summary = build_graph(tiny_cfg(tmp), finetune_fn=counting)
    assert counting.calls == [] and summary["built"] == [] and len(summary["skipped"]) == 6
    assert hashes(read_json(summary["graph_json"])) == hashes(graph)


@pytest.mark.slow
def test_interrupted_build_resumes_with_identical_hashes(baseline, tmp_path):
    """Crash at the 3rd fine-tune; the rerun trains only the 2 unfinished nodes. Both builds, from one seed,
    end with the baseline's weights bit for bit."""
    _, _, base_graph = baseline
    crashing = Counting(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        build_graph(tiny_cfg(tmp_path), finetune_fn=crashing)
    partial = read_json(tmp_path / "graphs" / "tiny" / "graph.json")
    assert not partial["complete"] and len(partial["nodes"]) == 4 and len(partial["pending"]) == 2
    resumed = Counting()
    summary = build_graph(tiny_cfg(tmp_path), finetune_fn=resumed)
    assert sorted(resumed.calls) == sorted(partial["pending"]) and len(summary["skipped"]) == 4
    assert hashes(read_json(summary["graph_json"])) == hashes(base_graph)


@pytest.mark.slow
def test_force_rebuilds_and_tampering_is_detected(baseline, tmp_path):
    tmp, _, base_graph = baseline
    counting = Counting()
    summary = build_graph(tiny_cfg(tmp, "data_gen.force=true"), finetune_fn=counting)
    assert len(summary["built"]) == 6 and len(counting.calls) == 4
    assert hashes(read_json(summary["graph_json"])) == hashes(base_graph)
    # corrupt a mid-level model: it is rebuilt (to the same bytes), so its child stays valid
    path = weights_path(tmp / "graphs" / "tiny", "vit_b1-0")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    counting = Counting()
    summary = build_graph(tiny_cfg(tmp), finetune_fn=counting)
    assert counting.calls == ["vit_b1-0"] and summary["built"] == ["vit_b1-0"]
    assert sha256_file(path) == base_graph["meta"]["vit_b1-0"]["sha256"]


@pytest.mark.slow
def test_changed_parent_or_recipe_invalidates_node(baseline):
    """A node trained from other parent weights, or recorded with another recipe, is not done."""
    tmp, _, graph = baseline
    gdir = tmp / "graphs" / "tiny"
    from data_gen.spec import build_spec
    from data_gen.graph import graph_config
    jobs = {j["id"]: j for j in build_spec(graph_config(tiny_cfg(tmp)), seed=0)}
    job, parent_sha = jobs["vit_a1-0-0"], graph["meta"]["vit_a1-0"]["sha256"]
    assert is_done(gdir, job, parent_sha)
    assert not is_done(gdir, job, "0" * 64)
    assert not is_done(gdir, {**job, "recipe": {**job["recipe"], "lr": 0.5}}, parent_sha)


@pytest.mark.slow
def test_changed_jobs_names_what_a_changed_config_would_retrain(baseline):
    """The nodes a changed recipe or tree shape plans differently (what analysis must not reuse as built)."""
    tmp, _, graph = baseline
    assert changed_jobs(tiny_cfg(tmp)) == []
    lr = changed_jobs(tiny_cfg(tmp, "++data_gen.methods.full.lr=0.5", "++data_gen.methods.lora.lr=0.5"))
    assert sorted(lr) == sorted(n for n in graph["nodes"] if graph["stage"][n] == "specialization")
    assert sorted(changed_jobs(tiny_cfg(tmp, "data_gen.depth=1"))) == ["vit_a1-0-0", "vit_b1-0-0"]


@pytest.mark.slow
def test_changed_root_source_rebuilds_its_tree(baseline, tmp_path):
    """A root whose source now gives other weights (a rebuilt built-in root) is stale with its whole tree;
    the other tree is kept."""
    import shutil

    from data_gen.sources import load_root

    tmp, _, base_graph = baseline
    shutil.copytree(tmp / "graphs", tmp_path / "graphs")

    def shifted_b1(root, **kwargs):
        arch, state = load_root(root, **kwargs)
        if "vit_b1" in str(root):
            state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}
        return arch, state

    assert stale_roots(tiny_cfg(tmp_path)) == []
    assert stale_roots(tiny_cfg(tmp_path), load_root_fn=shifted_b1) == ["vit_b1"]
    counting = Counting()
    summary = build_graph(tiny_cfg(tmp_path), finetune_fn=counting, load_root_fn=shifted_b1)
    assert sorted(summary["built"]) == ["vit_b1", "vit_b1-0", "vit_b1-0-0"]
    assert sorted(counting.calls) == ["vit_b1-0", "vit_b1-0-0"]
    new = hashes(read_json(summary["graph_json"]))
    assert all(new[n] == base_graph["meta"][n]["sha256"] for n in ("vit_a1", "vit_a1-0", "vit_a1-0-0"))
    assert new["vit_b1"] != base_graph["meta"]["vit_b1"]["sha256"]


@pytest.mark.parametrize("name", ["lora_v", "lora_f", "ft", "mixed", "deep", "resnet"])
def test_paper_graph_fails_fast_at_the_hub_offline(name, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1), a paper graph stops at its first hub root, at once and clearly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose([f"data_gen={name}", f"paths.graphs_dir={tmp_path}", "data_gen.progress=false"],
                  output_dir=tmp_path / "out")

    def no_training(**kwargs):
        raise AssertionError("nothing may be trained before the roots exist")

    start = time.perf_counter()
    with pytest.raises(Exception, match="(?i)hub root .* cannot be loaded.*HF_HUB_OFFLINE") as err:
        build_graph(cfg, finetune_fn=no_training)
    assert time.perf_counter() - start < 30
    assert ".safetensors" in str(err.value), "the message says how to point at a local file"


@pytest.mark.slow
def test_other_thread_count_refused_and_config_changes_said(baseline, tmp_path, caplog):
    """A graph is built at one thread count: resuming or reusing it at another is a ConfigError naming both
    (force retrains); nodes of a changed config and nodes no longer planned are each said in one warning."""
    import shutil

    from common.errors import ConfigError

    tmp, _, graph = baseline
    shutil.copytree(tmp / "graphs" / "tiny", tmp_path / "graphs" / "tiny")
    with pytest.raises(ConfigError, match=r"num_threads=\[1\].*asks num_threads=2.*rerun with num_threads=1"):
        build_graph(tiny_cfg(tmp_path, "num_threads=2"), finetune_fn=Counting())
    counting = Counting()
    with caplog.at_level("WARNING", logger="mother.data_gen"):
        summary = build_graph(tiny_cfg(tmp_path, "data_gen.depth=1"), finetune_fn=counting)
    assert counting.calls == [] and len(summary["skipped"]) == 4
    assert "2 node(s) the config no longer plans" in caplog.text and "vit_a1-0-0" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("++data_gen.methods.full.lr=0", r"node vit_a1-0 \(data_gen.methods.full\): recipe.lr must be a finite number > 0"),
    ("++data_gen.methods.full.epochs=0", r"recipe.epochs must be an integer >= 1"),
    ("data_gen.methods.full.tasks=[builtin/nope,builtin/digits]", r"unknown task 'builtin/nope'"),
    ("++data_gen.methods.full.n_train=0", r"data_gen.methods.full.n_train must be >= 1, got 0"),
    ("data_gen.roots=[{id: x, source: 'builtin:vit_zz'}]", r"unknown built-in root 'vit_zz'"),
    ("data_gen.roots=[{id: x, source: /nowhere/w.safetensors}]", r"root weights file not found"),
    ("data_gen.roots=[{id: x, source: 'foo:bar'}]", r"expected 'builtin:<name>'"),
])
def test_bad_values_fail_before_anything_is_built(tmp_path, override, message):
    """Every job the graph plans is checked first (each drawn recipe, task and split size; each root's source), so
    a bad value fails at once with a ConfigError, not after hours of training or not at all (an undrawn task)."""
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_graph(tiny_cfg(tmp_path, "data_gen.methods.lora=null", override))
    assert not (tmp_path / "graphs" / "tiny" / "models").exists()


def test_lora_rank_beyond_the_roots_width_fails_before_anything_is_built(tmp_path):
    """The rank is checked on the root's architecture (built-in vit_a1: qkv 192x64) up front, not when the node
    trains."""
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"node vit_a1-0 \(data_gen.methods.lora\): recipe.lora_rank=65 exceeds the "
                                          r"width of .*qkv \(weight as a matrix 192x64\)"):
        build_graph(tiny_cfg(tmp_path, "data_gen.methods.full=null", "++data_gen.methods.lora.lora_rank=65"))
    assert not (tmp_path / "graphs" / "tiny" / "models").exists()


def test_lora_rank_beyond_the_width_and_fractional_alpha():
    """A rank above a target's width is a ConfigError (the delta would be full rank); alpha keeps its fraction."""
    from common.errors import ConfigError
    from data_gen.finetune import add_lora, resolve_recipe
    from data_gen.models import classifier_name, create_model

    model = create_model("vit_mini", num_classes=4)
    head = classifier_name(model)
    with pytest.raises(ConfigError, match=r"recipe.lora_rank=1000 exceeds the width of .*qkv"):
        add_lora(model, resolve_recipe({"method": "lora", "lora_rank": 1000}), head)
    peft = add_lora(create_model("vit_mini", num_classes=4), resolve_recipe({"method": "lora", "lora_rank": 4,
                                                                             "lora_alpha": 0.5}), head)
    assert peft.peft_config["default"].lora_alpha == 0.5
    with pytest.raises(ConfigError, match=r"recipe.lora_targets \['head'\] match only the classifier head"):
        add_lora(create_model("vit_mini", num_classes=4), resolve_recipe({"method": "lora", "lora_targets": ["head"]}),
                 head)


def test_partial_writes_of_a_killed_build_are_removed(tmp_path):
    """atomic_write's temp files and the adapters' temp folders left by a kill mid-write are deleted when the next
    build starts; other files are not."""
    from data_gen.graph import remove_partial_writes

    for d in ("models", "nodes", "adapters/.x-0.ab12cd"):
        (tmp_path / d).mkdir(parents=True)
    stale = [tmp_path / "models" / ".x-0.safetensors.ab12.tmp", tmp_path / "nodes" / ".x-0.json.cd34.tmp",
             tmp_path / ".graph.json.ef56.tmp", tmp_path / "adapters" / ".x-0.ab12cd"]
    for f in stale[:3]:
        f.write_bytes(b"half")
    kept = [tmp_path / "models" / "x-0.safetensors", tmp_path / ".notes.tmp"]
    for f in kept:
        f.write_bytes(b"kept")
    remove_partial_writes(tmp_path)
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
