"""Bad input gets a clear message naming the file and the problem (synthetic checkpoints, no network)."""
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from common.io import write_json
from recovery.checkpoints import CheckpointError, discover
from recovery.synthetic import vit_shapes, write_tree
from recovery.weights import analyze_folder

SHAPES = vit_shapes(8, 1)


def _tree(path, **kw):
    return write_tree(path, SHAPES, {"r": ["a", "b"]}, ["r"], graph=False, **kw)


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no models found"):
        analyze_folder(tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="folder not found"):
        discover(tmp_path / "nope")


def test_single_model(tmp_path):
    _tree(tmp_path)
    for f in ("a", "b"):
        (tmp_path / f"{f}.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"only one model found .*r\.safetensors"):
        analyze_folder(tmp_path, progress=False)
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(tmp_path / "r.safetensors", hf / "model.safetensors")
    with pytest.raises(CheckpointError, match="single model"):
        discover(hf)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tiny"])
def test_truncated_or_corrupt_file(tmp_path, damage):
    _tree(tmp_path)
    p = tmp_path / "a.safetensors"
    data = p.read_bytes()
    p.write_bytes({"truncate": data[: len(data) - 100], "garbage": b"\x10\0\0\0\0\0\0\0not json at all!" + data[24:],
                   "tiny": b"\x01\x02"}[damage])
    res = analyze_folder(tmp_path, progress=False)   # default: left out with the reason, the others recovered
    assert res.ids == ["b", "r"] and re.search(r"a\.safetensors: (truncated|corrupt)", res.excluded["a"])
    assert any(w.startswith("excluded model a: ") and "a.safetensors" in w for w in res.warnings)
    with pytest.raises(CheckpointError, match=r"a\.safetensors: (truncated|corrupt).*recovery\.strict=true"):
        analyze_folder(tmp_path, progress=False, strict=True)
    (tmp_path / "b.safetensors").unlink()   # one usable model left: an error listing what was left out
    with pytest.raises(CheckpointError, match=r"fewer than two usable models .*a: .*a\.safetensors"):
        analyze_folder(tmp_path, progress=False)


def test_corrupt_pytorch_bin(tmp_path):
    _tree(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not a zip")
    assert "pytorch_model.bin: cannot load" in discover(tmp_path).excluded["m"]
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot load"):
        discover(tmp_path, strict=True)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf_model_excluded_with_warning(tmp_path, value):
    _tree(tmp_path)
    from safetensors.numpy import load_file
    w = load_file(str(tmp_path / "b.safetensors"))
    w["blocks.0.mlp.fc1.weight"][0, 0] = value
    save_file(w, str(tmp_path / "b.safetensors"))
    res = analyze_folder(tmp_path, progress=False)
    assert res.ids == ["a", "r"] and "NaN or Inf" in res.excluded["b"] and "b.safetensors" in res.excluded["b"]
    assert np.isfinite(res.distance).all() and any("b.safetensors" in w for w in res.warnings)
    with pytest.raises(CheckpointError, match=r"b\.safetensors: NaN or Inf weights.*recovery\.strict=true"):
        analyze_folder(tmp_path, progress=False, strict=True)


def test_different_architecture_excluded(tmp_path):
    _tree(tmp_path)
    save_file({"conv1.weight": np.ones((4, 3, 3, 3), np.float32)}, str(tmp_path / "resnet.safetensors"))
    res = analyze_folder(tmp_path, progress=False)
    assert "resnet" not in res.ids and "different architecture" in res.excluded["resnet"]
    with pytest.raises(CheckpointError, match=r"resnet\.safetensors: different architecture"):
        analyze_folder(tmp_path, progress=False, strict=True)


def test_no_majority_architecture(tmp_path):
    save_file({"x.weight": np.ones((4, 4), np.float32)}, str(tmp_path / "p.safetensors"))
    save_file({"y.weight": np.ones((5, 5), np.float32)}, str(tmp_path / "q.safetensors"))
    with pytest.raises(CheckpointError, match="no architecture is shared"):
        analyze_folder(tmp_path, progress=False)


def test_byte_identical_duplicates_keep_first(tmp_path):
    """Duplicates: the first id (sorted) is kept and reported with both ids; later copies are listed as excluded."""
    _tree(tmp_path)
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "a_copy.safetensors")
    res = analyze_folder(tmp_path, progress=False)
    assert "a_copy" not in res.ids and "duplicate of a (byte-identical file)" in res.excluded["a_copy"]
    assert res.aliases == {"a": ["a_copy"]} and any("a_copy" in w for w in res.warnings)
    with pytest.raises(CheckpointError, match=r"a_copy\.safetensors: duplicate of a"):
        analyze_folder(tmp_path, progress=False, strict=True)


def test_unknown_stage_values(tmp_path):
    _tree(tmp_path)
    write_json(tmp_path / "stages.json", {"a": "pretraining"})
    with pytest.raises(CheckpointError, match=r"stages\.json: unknown stage 'pretraining' for model 'a'"):
        analyze_folder(tmp_path, stages_file=tmp_path / "stages.json", progress=False)
    write_json(tmp_path / "stages.json", ["a"])
    with pytest.raises(CheckpointError, match="JSON object"):
        discover(tmp_path, tmp_path / "stages.json")


def test_missing_shard_and_duplicate_ids(tmp_path):
    _tree(tmp_path)
    d = tmp_path / "s"
    d.mkdir()
    write_json(d / "model.safetensors.index.json", {"weight_map": {"x": "model-00001-of-00002.safetensors"}})
    assert "shard files listed in the index are missing" in discover(tmp_path).excluded["s"]
    with pytest.raises(CheckpointError, match="shard files listed in the index are missing"):
        discover(tmp_path, strict=True)
    shutil.rmtree(d)
    (tmp_path / "a").mkdir()
    shutil.copy(tmp_path / "r.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="share the id 'a'"):
        discover(tmp_path)
