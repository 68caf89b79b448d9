"""Built-in roots: the registry, building into the cache with checkpoints, resume, shipping and loading.
Builds use a tiny recipe (a few steps on a small slice of the synthetic pretraining mix)."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from common.io import read_json, sha256_file
from data_gen import pretraining
from data_gen import roots
from data_gen.models import create_model
from data_gen.sources import load_root


def test_registry_has_unrelated_roots():
    vits = [s for s in roots.ROOTS.values() if s.arch == "vit_mini"]
    assert len(vits) >= 5 and len({s.recipe for s in vits}) >= 2
    assert any(s.arch == "resnet_mini" for s in roots.ROOTS.values())
    assert len(set(roots.ROOTS.values())) == len(roots.ROOTS)  # no two roots share (arch, recipe, seed)
    datas = {roots.RECIPES[s.recipe]["data"] for s in vits}
    assert len(datas) >= 2  # pretrained on different mixes
    with pytest.raises(KeyError, match="unknown built-in root 'nope'"):
        roots.spec("nope")


def test_unshipped_root_without_cache_dir_is_a_clear_error(tiny_root):
    with pytest.raises(FileNotFoundError, match="neither shipped.*cache_dir"):
        load_root(f"builtin:{tiny_root}", cache_dir=None)


@pytest.fixture
def tiny_root(monkeypatch, tmp_path):
    """Register a root with a 4-step recipe on 128 images of pretrain/mix_a, shipping into tmp."""
    recipe = {"data": "pretrain/mix_a", "n_train": 128, "n_val": 32,
              "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32, "max_steps": 8, "augment": ["flip"]}}
    monkeypatch.setitem(roots.RECIPES, "tiny", recipe)
    monkeypatch.setitem(roots.ROOTS, "tiny_vit", roots.RootSpec("vit_mini", "tiny", 7))
    for key, value in (("CHECKPOINT_EVERY", 2), ("EVAL_EVERY", 2), ("SHIP_FIRST", 2)):
        monkeypatch.setattr(roots, key, value)
    monkeypatch.setattr(roots, "ASSETS", tmp_path / "assets")
    return "tiny_vit"


def test_build_layout_resume_and_rebuild(tiny_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = roots.build_root(tiny_root, cache_dir=cache, data_dir=tmp_path / "data", num_threads=1,
                              progress=False)
    rec = read_json(folder / "root.json")
    assert rec["sha256"] == sha256_file(folder / "final.safetensors") and rec["steps"] == 8
    assert rec["stage"] == "generalization" and rec["num_threads"] == 1 and rec["arch"] == "vit_mini"
    assert rec["curve"]["step"] == [2, 4, 6, 8] and rec["val_accuracy"] == rec["curve"]["val_accuracy"][-1]
    losses = rec["curve"]["train_loss"]
    assert rec["plateau_drop"] == pytest.approx((losses[2] - losses[3]) / losses[2])  # the last 20% of 4 points
    pairs = roots.root_checkpoints(tiny_root, cache_dir=cache)
    assert [s for s, _ in pairs] == [0, 2, 4, 8] and pairs[-1][1] == folder / "final.safetensors"
    assert set(rec["checkpoints"]) == {"0", "2", "4"}
    assert not list(cache.glob(".*build*"))  # the temporary build folder is gone
    final = load_file(str(folder / "final.safetensors"))
    step0 = load_file(str(folder / "checkpoints" / "step_0.safetensors"))
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], step0["blocks.0.attn.qkv.weight"])

    def no_training(**kwargs):
        raise AssertionError("a built root was trained again")
    monkeypatch.setattr(pretraining, "pretrain", no_training)
    assert roots.build_root(tiny_root, cache_dir=cache) == folder  # resume: nothing to do
    (folder / "final.safetensors").write_bytes(b"truncated")
    with pytest.raises(AssertionError, match="trained again"):  # a corrupt root is rebuilt
        roots.build_root(tiny_root, cache_dir=cache)


def test_stopped_build_resumes_and_stale_recipe_is_rebuilt(tiny_root, tmp_path, monkeypatch):
    """A build stopped midway continues from its resume state to the same bits; another recipe's root is stale."""
    cache, data = tmp_path / "cache", tmp_path / "data"
    whole = roots.build_root(tiny_root, cache_dir=tmp_path / "whole", data_dir=data, num_threads=1, progress=False)
    calls = []

    def stop_after(step_limit):
        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == step_limit:
                raise KeyboardInterrupt
            return real_evaluate(*args, **kwargs)
        return evaluate
    real_evaluate = pretraining.evaluate
    # stopped at the 3rd evaluation (step 6), before that step's resume state: the last saved state is step 4
    monkeypatch.setattr(pretraining, "evaluate", stop_after(3))
    with pytest.raises(KeyboardInterrupt):
        roots.build_root(tiny_root, cache_dir=cache, data_dir=data, num_threads=1, progress=False)
    assert (cache / f".{tiny_root}.build" / "state" / "state.json").is_file()
    monkeypatch.setattr(pretraining, "evaluate", real_evaluate)
    folder = roots.build_root(tiny_root, cache_dir=cache, data_dir=data, num_threads=1, progress=False)
    rec = read_json(folder / "root.json")
    assert rec["resumed_from"] == 4 and rec["sha256"] == read_json(whole / "root.json")["sha256"]
    # the recipe changes: the cached root is stale and neither used nor shipped
    monkeypatch.setitem(roots.RECIPES["tiny"], "train", {**roots.RECIPES["tiny"]["train"], "lr": 2e-3})
    assert not roots._valid(tiny_root, cache)
    with pytest.raises(FileNotFoundError, match="current recipe"):
        roots.ship_root(tiny_root, cache_dir=cache)


def test_ship_then_load_builtin(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    roots.build_root(tiny_root, cache_dir=cache, data_dir=tmp_path / "data", num_threads=1, progress=False)
    shipped = roots.ship_root(tiny_root, cache_dir=cache)
    assert read_json(shipped.with_suffix(".json"))["sha256"] == sha256_file(shipped)
    cached = roots.root_checkpoints(tiny_root, cache_dir=cache)
    from_assets = roots.root_checkpoints(tiny_root, cache_dir=None)
    assert [s for s, _ in from_assets] == [s for s, _ in cached] == [0, 2, 4, 8]
    for (_, a), (_, b) in zip(from_assets, cached):
        assert a != b and sha256_file(a) == sha256_file(b)  # the shipped copies equal the cache's
    # an empty cache falls back to the shipped copy, without training
    assert roots.ensure_root(tiny_root, cache_dir=tmp_path / "empty") == shipped
    arch, state = load_root(f"builtin:{tiny_root}", cache_dir=tmp_path / "empty")
    model = create_model(arch, 36)
    model.load_state_dict(state)  # the pretraining head (36 classes of mix_a) included
    assert arch == "vit_mini"


@pytest.mark.parametrize("name", sorted(roots.ROOTS))
def test_shipped_roots_are_intact(name):
    """Every registered root is shipped, matches its recorded hash and loads into its arch."""
    weights = roots.ASSETS / f"{name}.safetensors"
    assert roots._shipped(name) == weights, f"{weights} missing or not matching its json record"
    rec = read_json(weights.with_suffix(".json"))
    state = load_file(str(weights))
    model = create_model(rec["arch"], state[("head" if rec["arch"] == "vit_mini" else "fc") + ".weight"].shape[0])
    model.load_state_dict(state)
    assert rec["stage"] == "generalization" and rec["steps"] == roots.train_recipe(name)["max_steps"]
    assert [s for s, _ in roots.root_checkpoints(name, cache_dir=None)][:-1] == roots.ship_steps(name)
