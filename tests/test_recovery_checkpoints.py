"""Model discovery and streaming reads on small synthetic checkpoints (no network, no real models)."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from common.io import write_json
from recovery.checkpoints import CheckpointError, discover, read_safetensors_header
from recovery.reader import ModelReader, iter_stacked, open_all
from recovery.synthetic import vit_shapes, write_tree


def _w(seed, shapes=None):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"a.weight": (4, 3), "b.weight": (5,)}
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


def test_reader_equals_safe_open(tmp_path):
    """Our pread-based reader returns exactly what safetensors.safe_open returns (f32, f16, bf16 via torch)."""
    from safetensors.torch import save_file as save_torch
    t = {"x": torch.randn(7, 5), "h": torch.randn(3, 2).half(), "b": torch.randn(6).bfloat16(), "i": torch.arange(4)}
    save_torch(t, str(tmp_path / "m.safetensors"))
    save_torch(t, str(tmp_path / "n.safetensors"))
    cat = discover(tmp_path)
    with ModelReader(cat.models[0]) as r, safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        for k in t:
            np.testing.assert_array_equal(r.get(k), f.get_tensor(k).float().numpy())


def test_flat_files_hf_folders_sharded_and_bin(tmp_path):
    """All layouts in one folder: *.safetensors, model.safetensors, sharded + index, pytorch_model.bin."""
    save_file(_w(0), str(tmp_path / "flat.safetensors"))
    (tmp_path / "hf").mkdir()
    save_file(_w(1), str(tmp_path / "hf" / "model.safetensors"))
    sh = tmp_path / "sharded"
    sh.mkdir()
    w2 = _w(2)
    save_file({"a.weight": w2["a.weight"]}, str(sh / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": w2["b.weight"]}, str(sh / "model-00002-of-00002.safetensors"))
    write_json(sh / "model.safetensors.index.json", {"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                                   "b.weight": "model-00002-of-00002.safetensors"}})
    (tmp_path / "pt").mkdir()
    w3 = _w(3)
    torch.save({k: torch.from_numpy(v) for k, v in w3.items()}, tmp_path / "pt" / "pytorch_model.bin")
    (tmp_path / "notes.txt").write_text("ignored")
    cat = discover(tmp_path)
    assert [m.id for m in cat.models] == ["flat", "hf", "pt", "sharded"]
    assert cat.stages == {k: "specialization" for k in ["flat", "hf", "pt", "sharded"]}
    stack, readers = open_all(cat.models)
    with stack:
        got = dict(iter_stacked(readers, ["a.weight"]))["a.weight"]
    np.testing.assert_array_equal(got[2], w3["a.weight"])
    np.testing.assert_array_equal(got[3], w2["a.weight"])


def test_graph_folder_stages_and_stages_file_override(tmp_path):
    """graph.json stages are used; a stages file overrides them and warns about unknown ids."""
    g = write_tree(tmp_path / "g", vit_shapes(8, 1), {"r": ["c"]}, ["r"])
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    data["stage"]["r"] = "generalization"
    write_json(tmp_path / "g" / "graph.json", data)
    cat = discover(tmp_path / "g")
    assert cat.layout == "graph" and cat.stages == {"c": "specialization", "r": "generalization"}
    write_json(tmp_path / "st.json", {"c": "Generalization", "zzz": "specialization"})
    cat = discover(tmp_path / "g", tmp_path / "st.json")
    assert cat.stages["c"] == "generalization" and any("zzz" in w for w in cat.warnings)
    assert sorted(g["nodes"]) == ["c", "r"]


def test_streaming_memory_is_one_tensor_stack(tmp_path):
    """Only one stacked tensor is alive at a time: the generator yields per tensor, shape (n, *shape)."""
    for i in range(3):
        save_file(_w(i, {"t0": (64, 64), "t1": (32,)}), str(tmp_path / f"m{i}.safetensors"))
    cat = discover(tmp_path)
    stack, readers = open_all(cat.models)
    with stack:
        shapes = [(k, v.shape) for k, v in iter_stacked(readers, ["t0", "t1"])]
    assert shapes == [("t0", (3, 64, 64)), ("t1", (3, 32))]


def test_header_parser_rejects_trailing_bytes(tmp_path):
    """Bytes beyond what the header describes mean a corrupt file."""
    p = tmp_path / "x.safetensors"
    save_file(_w(0), str(p))
    with open(p, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match="trailing bytes"):
        read_safetensors_header(p)
