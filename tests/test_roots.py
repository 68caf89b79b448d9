"""Built-in roots: the registry, building into the cache with checkpoints, resume, shipping and loading.
Builds use a tiny recipe (a few steps on a small slice of the synthetic pretraining mix)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.io import read_json, sha256_file
from data_gen import finetune as finetune_mod
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
              "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32, "epochs": 1, "max_steps": 4,
                        "augment": ["flip"]}}
    monkeypatch.setitem(roots.RECIPES, "tiny", recipe)
    monkeypatch.setitem(roots.ROOTS, "tiny_vit", roots.RootSpec("vit_mini", "tiny", 7))
    monkeypatch.setattr(roots, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(roots, "ASSETS", tmp_path / "assets")
    return "tiny_vit"


def test_build_layout_resume_and_rebuild(tiny_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = roots.build_root(tiny_root, cache_dir=cache, data_dir=tmp_path / "data", num_threads=1,
                              progress=False)
    rec = read_json(folder / "root.json")
    assert rec["sha256"] == sha256_file(folder / "final.safetensors") and rec["steps"] == 4
    assert rec["stage"] == "generalization" and rec["num_threads"] == 1 and rec["arch"] == "vit_mini"
    steps = [s for s, _ in roots.root_checkpoints(tiny_root, cache_dir=cache)]
    assert steps == [0, 2, 4]
    assert not list(cache.glob(".*build*"))  # the temporary build folder is gone
    final = load_file(str(folder / "final.safetensors"))
    step0 = load_file(str(folder / "checkpoints" / "step_0.safetensors"))
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], step0["blocks.0.attn.qkv.weight"])

    def no_training(**kwargs):
        raise AssertionError("a built root was trained again")
    monkeypatch.setattr(finetune_mod, "finetune", no_training)
    assert roots.build_root(tiny_root, cache_dir=cache) == folder  # resume: nothing to do
    (folder / "final.safetensors").write_bytes(b"truncated")
    with pytest.raises(AssertionError, match="trained again"):  # a corrupt root is rebuilt
        roots.build_root(tiny_root, cache_dir=cache)


def test_ship_then_load_builtin(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    roots.build_root(tiny_root, cache_dir=cache, data_dir=tmp_path / "data", num_threads=1, progress=False)
    shipped = roots.ship_root(tiny_root, cache_dir=cache)
    assert read_json(shipped.with_suffix(".json"))["sha256"] == sha256_file(shipped)
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
    assert rec["stage"] == "generalization" and rec["steps"] == roots.STEPS
