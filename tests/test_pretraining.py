"""Resumable root pretraining: a run stopped at any saved step and rerun ends bit-identical to an unbroken run."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import data_gen.pretraining as pt
from data_gen.models import create_model
from data_gen.tasks import load_task

RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "scheduler": "cosine", "warmup_steps": 3,
          "augment": ["flip", "crop"], "batch_size": 16, "max_steps": 12, "seed": 5}


@pytest.fixture(scope="module")
def task():
    return load_task("pretrain/mix_a", seed=0, n_train=160, n_val=32)


def _run(task, folder, **kw):
    return pt.pretrain(arch="vit_mini", task=task, recipe=RECIPE, folder=folder, checkpoint_every=4, eval_every=2,
                       num_threads=1, progress=False, arch_kwargs={"depth": 1}, **kw)


def test_resume_after_a_stop_is_bit_identical(task, tmp_path, monkeypatch):
    full = _run(task, tmp_path / "full")
    calls = {"n": 0}
    evaluate = pt.evaluate

    def stop_at_third_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # step 6: after the resume state of step 4 was saved
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(pt, "evaluate", stop_at_third_eval)
    with pytest.raises(KeyboardInterrupt):
        _run(task, tmp_path / "broken")
    assert (tmp_path / "broken" / "state" / "state.json").is_file()
    monkeypatch.setattr(pt, "evaluate", evaluate)
    resumed = _run(task, tmp_path / "broken")
    assert resumed["resumed_from"] == 4 and full["resumed_from"] is None
    a, b = (load_file(str(tmp_path / f / "final.safetensors")) for f in ("full", "broken"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["curve"] == full["curve"] and full["curve"]["step"] == [2, 4, 6, 8, 10, 12]
    assert not (tmp_path / "broken" / "state").exists()  # the resume state is gone once the run completes
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "full" / "checkpoints").glob("*.safetensors"))
    assert steps == [0, 4, 8, 12]
    init = load_file(str(tmp_path / "full" / "checkpoints" / "step_0.safetensors"))
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])


def test_resume_refuses_a_state_of_another_recipe(task, tmp_path, monkeypatch):
    calls = {"n": 0}
    evaluate = pt.evaluate

    def stop_at_third_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(pt, "evaluate", stop_at_third_eval)
    with pytest.raises(KeyboardInterrupt):
        _run(task, tmp_path / "r")
    monkeypatch.setattr(pt, "evaluate", evaluate)
    with pytest.raises(ValueError, match="another recipe"):
        pt.pretrain(arch="vit_mini", task=task, recipe={**RECIPE, "lr": 1e-3}, folder=tmp_path / "r",
                    checkpoint_every=4, eval_every=2, num_threads=1, progress=False, arch_kwargs={"depth": 1})


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = [pt.lr_factor(s, warmup=2, total=10, scheduler="cosine", final=0.1) for s in range(11)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == pytest.approx(1.0)
    assert f[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[2:], f[3:]))


def test_batches_cover_each_epoch_once():
    n, bs = 40, 8
    epoch0 = torch.cat([pt.batch_indices(s, n, bs, seed=3) for s in range(5)])
    epoch1 = torch.cat([pt.batch_indices(s, n, bs, seed=3) for s in range(5, 10)])
    assert sorted(epoch0.tolist()) == list(range(n)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)


def test_width_named_vits():
    m = create_model("vit_mini_d128", 10)
    assert m.embed_dim == 128 and m.pretrained_cfg["classifier"] == "head"
    with pytest.raises(ValueError, match="multiple of 4"):
        create_model("vit_mini_d130", 10)
