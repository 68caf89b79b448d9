"""Bad input gets a clear message naming the file and the problem (synthetic checkpoints, no network)."""
import json
import re
import shutil
import warnings

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


def _forge_header(path, name, shape):
    """Add tensor `name` with a forged `shape` and an empty byte range to a safetensors file's header."""
    import struct
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("shape", [[2 ** 32, 2 ** 32], [-4, -4], [2.5, 4]])
def test_forged_shapes_in_the_header_are_corruption(tmp_path, shape):
    """A shape whose product overflows int64, a negative or a fractional one: corrupt, not a tensor to read."""
    _tree(tmp_path)
    _forge_header(tmp_path / "a.safetensors", "blocks.0.extra.weight", shape)
    res = analyze_folder(tmp_path, progress=False)
    assert res.ids == ["b", "r"] and "a.safetensors: corrupt safetensors header" in res.excluded["a"]


@pytest.mark.parametrize("graph, problem", [("{bad", "not valid JSON"), ([1, 2], "not a graph.json"),
                                            ({"stage": ["a"]}, "'stage' must map model ids")])
def test_broken_graph_json_of_a_graph_folder(tmp_path, graph, problem):
    _tree(tmp_path / "models")
    (tmp_path / "graph.json").write_text(graph if isinstance(graph, str) else json.dumps(graph))
    with pytest.raises(CheckpointError, match=rf"graph\.json: {re.escape(problem)}"):
        discover(tmp_path)


def test_integer_tensors_are_named_as_quantized(tmp_path):
    _tree(tmp_path)
    from safetensors.numpy import load_file
    w = {k: v.astype(np.int8) for k, v in load_file(str(tmp_path / "a.safetensors")).items()}
    save_file(w, str(tmp_path / "a.safetensors"))
    res = analyze_folder(tmp_path, progress=False)
    assert "integer tensors: quantized weights are not compared" in res.excluded["a"]


def test_tensors_the_models_disagree_on_are_said_and_strict_fails(tmp_path):
    _tree(tmp_path)
    from safetensors.numpy import load_file
    w = load_file(str(tmp_path / "a.safetensors"))
    name = next(k for k in w if k.endswith("mlp.fc1.weight"))
    w[name] = np.zeros((w[name].shape[0] + 1, w[name].shape[1]), np.float32)
    save_file(w, str(tmp_path / "a.safetensors"))
    res = analyze_folder(tmp_path, progress=False)
    assert name in res.dropped and name not in res.layers
    assert any("left out of every model because the models disagree" in m and name in m for m in res.warnings)
    with pytest.raises(CheckpointError, match="disagree on them.*recovery.strict=true"):
        analyze_folder(tmp_path, progress=False, strict=True)


def test_skipped_files_are_said_and_empty_tensors_dropped(tmp_path):
    """Pickles in a flat folder, broken links and folders without weights are skipped with a note (never
    unpickled); an upper-case .SAFETENSORS is a model; a tensor with a zero dimension takes no part."""
    _tree(tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"never unpickled")
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    shutil.move(tmp_path / "b.safetensors", tmp_path / "B.SAFETENSORS")
    from safetensors.numpy import load_file
    for f in ("a.safetensors", "B.SAFETENSORS", "r.safetensors"):
        save_file({**load_file(str(tmp_path / f)), "blocks.0.empty.weight": np.zeros((0, 8), np.float32)},
                  str(tmp_path / f))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # the empty tensor must not reach a division
        res = analyze_folder(tmp_path, progress=False, layers={"kinds": ["all"]})
    assert sorted(res.ids) == ["B", "a", "r"]
    notes = " | ".join(res.warnings)
    assert "evil.pt" in notes and "gone.safetensors: skipped, a broken link" in notes
    assert "notes: skipped, no model weights there" in notes
    assert res.dropped["blocks.0.empty.weight"].startswith("empty") and np.isfinite(res.distance).all()


def test_weights_near_float32_range_give_finite_distances(tmp_path):
    """A finite weight whose square overflows float32 (1e20): the Gram is redone in float64, no error."""
    _tree(tmp_path)
    from safetensors.numpy import load_file
    w = load_file(str(tmp_path / "a.safetensors"))
    name = next(k for k in w if k.endswith("mlp.fc1.weight"))
    w[name][0, 0] = 1e20
    save_file(w, str(tmp_path / "a.safetensors"))
    res = analyze_folder(tmp_path, progress=False)
    assert np.isfinite(res.distance).all() and np.isfinite(res.l2).all() and res.l2.max() > 1e18


def test_overlapping_tensor_ranges_are_corruption(tmp_path):
    """Tensors must lie back to back in the data section (the format's rule): two sharing bytes is corruption."""
    import struct

    from recovery.checkpoints import read_safetensors_header

    path = tmp_path / "m.safetensors"
    save_file({"x.weight": np.ones((4, 4), np.float32), "y.weight": np.ones((2, 2), np.float32)}, str(path))
    assert set(read_safetensors_header(path)) == {"x.weight", "y.weight"}
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["y.weight"]["data_offsets"] = [0, 16]    # y re-reads x's first bytes; the last 16 bytes: a gap
    header["x.weight"]["data_offsets"] = [0, 64]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match="overlap or gap"):
        read_safetensors_header(path)
