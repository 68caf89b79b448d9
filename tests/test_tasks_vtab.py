"""VTAB tasks: split arithmetic and label derivations (pure), offline failure, and loading through
`tfds.testing.mock_data` (synthetic mock examples: mock data ignores split slicing, so the slicing itself is
tested by the pure split tests)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.paths import project_root
from data_gen.tasks import list_tasks, load_task, vtab

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tfds = pytest.mark.skipif(not HAS_TFDS, reason="tensorflow-datasets is not installed (pip install -e '.[vtab]')")
needs_tf = pytest.mark.skipif(not (HAS_TFDS and HAS_TF), reason="tensorflow and tensorflow-datasets are not installed")


# ------------------------------------------------------------------------------------------------ pure parts
def test_task_lists():
    """All 19 VTAB-1k tasks; the 10K variant lists the paper's six FT datasets."""
    assert len(list_tasks("vtab")) == 19 and "vtab/clevr_count" in list_tasks("vtab")
    assert list_tasks("vtab10k") == [f"vtab10k/{t}" for t in vtab.PAPER_10K]


@pytest.mark.parametrize("task", list(vtab.TASKS))
def test_vtab1k_splits(task):
    """train800 = head of the train split, val200 has 200 examples, both inside their splits, disjoint."""
    t = vtab.TASKS[task]
    s = vtab.splits(task, "vtab")
    split, start, stop = vtab.split_range(s["train"], t.split_sizes)
    assert (split, start, stop) == (t.train, 0, 800)
    vsplit, vstart, vstop = vtab.split_range(s["val"], t.split_sizes)
    assert vstop - vstart == 200
    assert vsplit != split or vstart >= stop
    tsplit, tstart, tstop = vtab.split_range(s["test"], t.split_sizes)
    assert tstop > tstart and (tsplit != vsplit or tstart >= vstop or tstop <= vstart)


@pytest.mark.parametrize("task", list(vtab.TASKS))
def test_vtab10k_splits(task):
    """10K variant: train[:10000] where 10000 examples precede val200 in the same split; clear error otherwise."""
    t = vtab.TASKS[task]
    if task in vtab.PAPER_10K:
        s = vtab.splits(task, "vtab10k")
        assert vtab.split_range(s["train"], t.split_sizes) == (t.train, 0, 10_000)
        assert s["val"] == vtab.splits(task, "vtab")["val"]
    elif t.split_sizes[t.train] < 10_000 or (t.val.startswith(t.train + "[") and
                                             vtab.split_range(t.val, t.split_sizes)[1] < 10_000):
        with pytest.raises(ValueError, match="overlaps|outside"):
            vtab.splits(task, "vtab10k")


def test_split_range_arithmetic():
    """Slices, percentages and negative bounds resolve like tfds; bad specs raise."""
    sizes = {"train": 1000, "test": 24300}
    assert vtab.split_range("train", sizes) == ("train", 0, 1000)
    assert vtab.split_range("train[10:20]", sizes) == ("train", 10, 20)
    assert vtab.split_range("test[50%:]", sizes) == ("test", 12150, 24300)
    assert vtab.split_range("train[-100:]", sizes) == ("train", 900, 1000)
    assert vtab.split_range("train[:25%]", sizes) == ("train", 0, 250)
    for bad in ("validation", "train[5:2]", "train[:2000]", "train[[1]"):
        with pytest.raises(ValueError):
            vtab.split_range(bad, sizes)
    with pytest.raises(ValueError, match="variant"):
        vtab.splits("cifar100", "vtab5k")
    with pytest.raises(KeyError, match="known"):
        vtab.splits("imagenet")


def _objects(depths, kinds=None):
    """A CLEVR/KITTI-like `objects` dict (synthetic)."""
    n = len(depths)
    xyz = np.stack([np.zeros(n), np.zeros(n), np.asarray(depths, float)], 1).astype(np.float32)
    return {"pixel_coords": xyz, "location": xyz, "type": np.asarray(kinds if kinds is not None else [0] * n)}


def test_label_derivations():
    """Synthetic examples: CLEVR count / closest distance, KITTI closest vehicle, dSprites binning."""
    assert vtab.clevr_count({"objects": _objects([9.0] * 3)}) == 0
    assert vtab.clevr_count({"objects": _objects([9.0] * 10)}) == 7
    for depths, label in (([7.0, 12.0], 0), ([8.0, 9.9], 0), ([8.2, 11.0], 1), ([9.6, 9.7], 4), ([10.5], 5),
                          ([30.0, 10.2], 5)):
        assert vtab.clevr_distance({"objects": _objects(depths)}) == label, depths
    pedestrian, car, van, truck, tram = 3, 0, 1, 2, 6
    for depths, kinds, label in (([], [], 3), ([2.0], [pedestrian], 3), ([5.0, 30.0], [car, van], 0),
                                 ([15.0, 3.0], [truck, tram], 1), ([25.0], [van], 2), ([7.99], [car], 0)):
        assert vtab.kitti_distance({"objects": _objects(depths, kinds)}) == label, (depths, kinds)
    orient, loc = vtab.binned("label_orientation", 40, 16), vtab.binned("label_x_position", 32, 16)
    assert [orient({"label_orientation": v}) for v in (0, 2, 3, 5, 39)] == [0, 0, 1, 2, 15]
    assert [loc({"label_x_position": v}) for v in (0, 1, 2, 31)] == [0, 0, 1, 15]
    assert {vtab.TASKS[t].label({"label": 7, "label_azimuth": 7, "label_elevation": 7}) for t in
            ("cifar100", "smallnorb_azimuth", "smallnorb_elevation")} == {7}


def test_image_conversion():
    """Synthetic images: grey and binary images become RGB uint8; resizing gives the requested size."""
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert vtab.to_rgb_uint8(grey).shape == (3, 3, 4)
    binary = vtab.to_rgb_uint8(np.array([[[0], [1]]], np.uint8), binary=True)
    assert binary.tolist() == [[[0, 255]]] * 3
    img = np.full((3, 40, 60), 200, np.uint8)
    out = vtab.resize(img, 24)
    assert out.shape == (3, 24, 24) and out.dtype == np.uint8 and (out == 200).all()
    with pytest.raises(ValueError, match="uint8"):
        vtab.to_rgb_uint8(np.zeros((4, 4, 3), np.float32))


# ------------------------------------------------------------------------------------------- with tfds
@needs_tfds
def test_missing_dataset_fails_fast(tmp_path, monkeypatch):
    """Offline: an unprepared dataset raises at once, naming the task, the tfds build command and data dir."""
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(vtab.VtabUnavailableError) as e:
        load_task("vtab/clevr_count", data_dir=tmp_path)
    msg = str(e.value)
    assert "vtab/clevr_count" in msg and "tfds build clevr" in msg and str(tmp_path / "tensorflow_datasets") in msg


@pytest.fixture
def mock_tfds(monkeypatch):
    """tfds.testing.mock_data with builders reporting 'prepared' (the mock stands in for prepared data)."""
    tfds = vtab.import_tfds()
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)

    def enter(**kwargs):
        return tfds.testing.mock_data(**kwargs)
    return enter


@needs_tf
@pytest.mark.parametrize("task,size", [("cifar100", 32), ("svhn", 16), ("smallnorb_elevation", 24)])
def test_mock_loading(mock_tfds, task, size):
    """Mock tfds data (random): shapes, dtypes, label ranges; mock ignores slicing, so counts are capped."""
    with mock_tfds(num_examples=12):
        t = load_task(f"vtab/{task}", image_size=size)
    k = vtab.TASKS[task].num_classes
    assert t.num_classes == k and t.group == vtab.TASKS[task].group
    for x, y in ((t.x_train, t.y_train), (t.x_val, t.y_val)):
        assert x.shape == (12, 3, size, size) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < k
    assert t.meta["splits"]["train"] == vtab.splits(task)["train"]


@needs_tf
def test_mock_dsprites_orientation_binned(mock_tfds):
    """Mock dSprites (random): binary images scaled to {0, 255}, labels = orientation binned 40 -> 16."""
    with mock_tfds(num_examples=20):
        t = load_task("vtab/dsprites_orientation", image_size=64)
        builder = vtab.get_builder("dsprites_orientation", None, False)
        raw = list(vtab.iterate(builder, "train[:800]"))
    expected = [int(ex["label_orientation"] // 2.5) for ex in raw]
    assert t.y_train.tolist() == expected and t.y_train.max() < 16
    assert set(torch.unique(t.x_train).tolist()) <= {0, 255}


@needs_tf
def test_mock_clevr_derived_labels(mock_tfds, tmp_path):
    """Mock CLEVR with hand-made examples (varying image sizes, 3..10 objects, known depths): derived count and
    closest-distance labels, resizing, and the cache round trip."""
    import tensorflow as tf

    counts = [3, 4, 5, 6, 7, 8, 9, 10]
    depths = [7.5, 8.2, 8.7, 9.2, 9.7, 10.5, 8.0, 12.0]

    def examples():
        for i, (n, d) in enumerate(zip(counts, depths)):
            z = np.full(n, 20.0, np.float32)
            z[i % n] = d
            yield {"image": np.full((20 + 4 * i, 30, 3), 10 * i, np.uint8),
                   "objects": {"pixel_coords": np.stack([np.zeros(n), np.zeros(n), z], 1).astype(np.float32)}}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(examples, output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "objects": {"pixel_coords": tf.TensorSpec((None, 3), tf.float32)}})

    with mock_tfds(as_dataset_fn=as_dataset):
        count = load_task("vtab/clevr_count", image_size=16, data_dir=tmp_path)
        dist = load_task("vtab10k/clevr_distance", image_size=16)
    assert count.y_train.tolist() == [n - 3 for n in counts] and count.num_classes == 8
    assert dist.y_train.tolist() == [0, 1, 2, 3, 4, 5, 0, 5] and dist.num_classes == 6
    assert count.x_train.shape == (8, 3, 16, 16) and int(count.x_train[3].float().mean()) == 30
    assert dist.meta["splits"]["train"] == "train[:10000]"
    cached = load_task("vtab/clevr_count", image_size=16, data_dir=tmp_path)  # no mock: from the cache
    assert cached.meta["cache"] == str(tmp_path / "vtab" / "clevr_count-16.npz")
    assert torch.equal(cached.x_train, count.x_train) and torch.equal(cached.y_val, count.y_val)


@needs_tf
def test_training_after_mock_loading(mock_tfds):
    """After a VTAB load (TensorFlow imported after torch._dynamo), an optimizer step works (pitfall 1: the
    wrong order segfaults at the first optimizer). Synthetic mock data."""
    with mock_tfds(num_examples=4):
        t = load_task("vtab/svhn", image_size=8)
    assert "tensorflow" in sys.modules
    model = torch.nn.Linear(3 * 8 * 8, 10)
    opt = torch.optim.AdamW(model.parameters())
    torch.nn.functional.cross_entropy(model(t.x_train.float().flatten(1)), t.y_train).backward()
    opt.step()
    assert torch.isfinite(model.weight).all()


@needs_tf
@pytest.mark.slow
def test_vtab_loading_alone_then_training_in_a_fresh_process():
    """In a fresh interpreter that imports only data_gen.tasks (no Lightning, no data_gen.finetune, which callers
    once imported first as a workaround), a VTAB load through import_tfds then an AdamW step works."""
    code = "\n".join([
        "from data_gen.tasks import load_task",
        "from data_gen.tasks.vtab import import_tfds",
        "tfds = import_tfds()",
        "tfds.core.DatasetBuilder.is_prepared = lambda self: True",
        "with tfds.testing.mock_data(num_examples=4):",
        "    t = load_task('vtab/svhn', image_size=8)",
        "import sys, torch",
        "assert 'tensorflow' in sys.modules and 'pytorch_lightning' not in sys.modules",
        "m = torch.nn.Linear(3 * 8 * 8, 10)",
        "opt = torch.optim.AdamW(m.parameters())",
        "torch.nn.functional.cross_entropy(m(t.x_train.float().flatten(1)), t.y_train).backward()",
        "opt.step()",
        "print('finite', bool(torch.isfinite(m.weight).all()))",
    ])
    out = subprocess.run([sys.executable, "-c", code], cwd=project_root(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("finite True")


@needs_tf
@pytest.mark.slow
def test_real_builder_on_fake_raw_files(tmp_path, monkeypatch):
    """The real patch_camelyon builder prepares locally written fake h5 files (only the download is patched),
    then load_task reads the prepared tfrecords with real split slicing: 800 of 850 train, 200 of 230 val.
    Synthetic images encode their label (value % 2), so image/label pairing is checked too."""
    h5py = pytest.importorskip("h5py")
    tfds = vtab.import_tfds()
    paths = {}
    for split, n in (("train", 850), ("valid", 230), ("test", 4)):
        i = np.arange(n)
        arrays = {"x": np.broadcast_to((2 * (i % 120) + i % 2).astype(np.uint8)[:, None, None, None],
                                       (n, 96, 96, 3)),
                  "y": (i % 2).astype(np.uint8).reshape(n, 1, 1, 1)}
        for k, a in arrays.items():
            paths[f"{split}_{k}"] = str(tmp_path / f"{split}_{k}.h5")
            with h5py.File(paths[f"{split}_{k}"], "w") as f:
                f.create_dataset(k, data=a)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, resources: paths)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(vtab.VtabUnavailableError):
        load_task("vtab/patch_camelyon", image_size=8, data_dir=tmp_path)
    t = load_task("vtab/patch_camelyon", image_size=8, data_dir=tmp_path, allow_download=True)
    assert t.x_train.shape == (800, 3, 8, 8) and t.x_val.shape == (200, 3, 8, 8)
    for x, y in ((t.x_train, t.y_train), (t.x_val, t.y_val)):
        assert torch.equal(x[:, 0, 0, 0].long() % 2, y)
        assert (x == x[:, :1, :1, :1]).all()  # constant images stay constant through the resize
    assert 300 < int(t.y_train.sum()) < 500 and t.meta["tfds_version"] == "2.0.0"
    (tmp_path / "vtab" / "patch_camelyon-8.npz").unlink()  # drop the array cache: read the tfrecords again
    again = load_task("vtab/patch_camelyon", image_size=8, data_dir=tmp_path)  # prepared: no download needed
    assert torch.equal(again.x_train, t.x_train) and torch.equal(again.y_val, t.y_val)
