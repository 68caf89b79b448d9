"""Built-in synthetic tasks and pretraining mixes (all data here is synthetic, made by data_gen.tasks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_gen.tasks import TaskData, builtin, cache_path, list_tasks, load_task, pretrain
from data_gen.tasks.store import load_arrays, save_arrays

SMALL = dict(n_train=96, n_val=48)


def test_list_tasks_covers_vtab_groups():
    """At least ten built-in tasks, spread over VTAB's natural / specialized / structured groups."""
    names = list_tasks("builtin")
    assert len(names) >= 10 and all(n.startswith("builtin/") for n in names)
    groups = {builtin.GENERATORS[n.split("/")[1]].group for n in names}
    assert groups == {"natural", "specialized", "structured"}
    assert list_tasks("pretrain") == ["pretrain/mix_a", "pretrain/mix_b"]
    with pytest.raises(ValueError, match="unknown task source"):
        list_tasks("imagenet")


@pytest.mark.parametrize("name", list_tasks("builtin"))
def test_task_arrays(name):
    """Synthetic task: uint8 images [N, 3, H, W] with content, int64 labels in range, balanced classes."""
    t = load_task(name, image_size=32, seed=3, **SMALL)
    assert isinstance(t, TaskData) and t.name == name
    for x, y, n in ((t.x_train, t.y_train, 96), (t.x_val, t.y_val, 48)):
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        counts = np.bincount(y.numpy(), minlength=t.num_classes)
        assert len(counts) == t.num_classes and counts.max() - counts.min() <= 1
        assert x.float().std(dim=(1, 2, 3)).min() > 5  # no blank images
    assert t.group in ("natural", "specialized", "structured")
    assert t.meta["seed"] == 3 and t.meta["source"] == "builtin" and t.meta["cache"] is None


def test_determinism_and_split_independence():
    """Synthetic task: same seed -> identical arrays; another seed differs; val does not depend on n_train."""
    a = load_task("builtin/count", seed=1, **SMALL)
    b = load_task("builtin/count", seed=1, **SMALL)
    c = load_task("builtin/count", seed=2, **SMALL)
    d = load_task("builtin/count", seed=1, n_train=64, n_val=48)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_train, c.x_train) and not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.x_val, d.x_val) and torch.equal(a.y_val, d.y_val)
    assert not torch.equal(a.x_train[:48], a.x_val)  # train and val come from different streams


@pytest.mark.parametrize("size", [16, 48])
def test_image_size(size):
    """Synthetic task: the image size is configurable."""
    t = load_task("builtin/heading", image_size=size, **SMALL)
    assert t.x_train.shape[1:] == (3, size, size)


def test_digits_pools_are_disjoint():
    """scikit-learn digits: train and val images come from disjoint source digits (no leakage)."""
    src, labels = builtin._digit_source()
    assert src.shape == (1797, 8, 8) and 0 <= src.min() and src.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))
    rng = np.random.default_rng(0)
    y = np.arange(50) % 10
    a = builtin.gen_digits(rng, y, 16, pool="train")
    assert a.shape == (50, 3, 16, 16)


def test_cache_round_trip(tmp_path, monkeypatch):
    """Synthetic task cached as data_dir/builtin/<name>-<seed>-<size>[...].npz, read back without regenerating."""
    first = load_task("builtin/shapes", seed=5, data_dir=tmp_path, **SMALL)
    path = tmp_path / "builtin" / "shapes-5-32-96-48.npz"
    assert first.meta["cache"] == str(path) and path.exists()
    monkeypatch.setattr(builtin, "generate", lambda *a, **k: pytest.fail("regenerated despite a valid cache"))
    second = load_task("builtin/shapes", seed=5, data_dir=tmp_path, **SMALL)
    for k in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(first, k), getattr(second, k))
    assert second.meta == first.meta
    with np.load(path, allow_pickle=False) as z:  # no pickles inside
        assert set(z.files) == {"x_train", "y_train", "x_val", "y_val", "meta"}


def test_cache_path_names():
    """Default split sizes give data_dir/<source>/<task>-<seed>-<size>.npz."""
    assert cache_path("d", "builtin", "count", 0, 32, 3000, 400).as_posix() == "d/builtin/count-0-32.npz"
    assert cache_path("d", "pretrain", "mix_a", 1, 32, 500, 50).as_posix() == "d/pretrain/mix_a-1-32-500-50.npz"


def test_stale_cache_regenerated_and_broken_cache_named(tmp_path):
    """Synthetic task: a cache whose meta differs (old generator version) is replaced; a broken file raises."""
    fresh = load_task("builtin/hue", data_dir=tmp_path, **SMALL)
    path = tmp_path / "builtin" / "hue-0-32-96-48.npz"
    arrays, meta = load_arrays(path)
    save_arrays(path, {k: np.zeros_like(v) for k, v in arrays.items()}, {**meta, "version": -1})
    again = load_task("builtin/hue", data_dir=tmp_path, **SMALL)
    assert torch.equal(again.x_train, fresh.x_train)
    assert load_arrays(path)[1]["version"] == builtin.VERSION
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="hue-0-32-96-48.npz"):
        load_task("builtin/hue", data_dir=tmp_path, **SMALL)


def test_pretrain_mixes():
    """Synthetic pretraining mixes: disjoint generators, relabelled classes covering 0..K-1, deterministic."""
    a, b = (set(pretrain.MIXES[m]) for m in ("mix_a", "mix_b"))
    assert not a & b and len(a | b) == len(builtin.GENERATORS)
    for name in list_tasks("pretrain"):
        t = load_task(name, seed=0, n_train=600, n_val=120)
        recipe = name.split("/")[1]
        assert t.group == "pretrain" and 20 <= t.num_classes <= 60
        assert t.num_classes == sum(builtin.GENERATORS[c].num_classes for c in pretrain.MIXES[recipe])
        counts = np.bincount(t.y_train.numpy(), minlength=t.num_classes)
        assert len(counts) == t.num_classes and counts.min() >= 600 // t.num_classes - 2
        assert t.x_train.shape == (600, 3, 32, 32) and t.x_val.shape == (120, 3, 32, 32)
        again = load_task(name, seed=0, n_train=600, n_val=120)
        assert torch.equal(t.x_train, again.x_train) and torch.equal(t.y_val, again.y_val)


def test_bad_names():
    """Unknown sources, tasks and recipes fail with the known names in the message."""
    with pytest.raises(ValueError, match="<source>/<task>"):
        load_task("count")
    with pytest.raises(KeyError, match="known"):
        load_task("builtin/nope")
    with pytest.raises(KeyError, match="mix_a"):
        load_task("pretrain/nope")
    with pytest.raises(ValueError, match="fixed by the protocol"):
        load_task("vtab/cifar100", n_train=10)
