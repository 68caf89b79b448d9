"""Layer selection on synthetic timm- and HF-named ViT shapes (names and shapes only; weights are random)."""
import numpy as np
import pytest

from recovery.checkpoints import ModelSource, TensorInfo
from recovery.layers import (KINDS, is_fused_qkv, is_fused_qkv_cols, is_head, numel, select_layers, split_architectures,
                             tensor_kinds)
from recovery.synthetic import vit_shapes


def _model(mid, shapes):
    return ModelSource(mid, None, [], {k: TensorInfo(None, "F32", tuple(v)) for k, v in shapes.items()}, "safetensors")


@pytest.mark.parametrize("naming", ["timm", "hf"])
def test_every_kind_selects_the_right_tensors(naming):
    """query/key/value/attn_out/mlp/dense/square_2d/all_2d/conv/all on one ViT block; qkv split in timm."""
    ms = [_model(str(i), vit_shapes(16, 1, naming=naming)) for i in range(2)]
    got = {k: [l.name for l in select_layers(ms, [k])[0]] for k in KINDS}
    if naming == "timm":
        assert got["query"] == ["blocks.0.attn.qkv.weight[q]"] and got["value"] == ["blocks.0.attn.qkv.weight[v]"]
        assert got["attn_out"] == ["blocks.0.attn.proj.weight"]
        assert got["mlp"] == ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"]
        assert got["conv"] == ["patch_embed.proj.weight"]
        assert "blocks.0.attn.qkv.weight" in got["all_2d"]
    else:
        p = "vit.encoder.layer.0."
        assert got["query"] == [p + "attention.attention.query.weight"]
        assert got["key"] == [p + "attention.attention.key.weight"]
        assert got["attn_out"] == [p + "attention.output.dense.weight"]
        assert got["mlp"] == [p + "intermediate.dense.weight", p + "output.dense.weight"]
    assert got["dense"] == got["attn_out"] + got["mlp"] or sorted(got["dense"]) == sorted(got["attn_out"] + got["mlp"])
    assert set(got["square_2d"]) <= set(got["all_2d"]) <= set(got["all"])
    assert not any("head" in n or "classifier" in n for k in KINDS for n in got[k])


def test_qkv_slices_take_the_right_rows():
    """The [k] slice of a fused qkv is rows d..2d."""
    ms = [_model("a", vit_shapes(8, 1))]
    (layer,), _ = select_layers(ms, ["key"])
    x = np.arange(24 * 8).reshape(24, 8)
    np.testing.assert_array_equal(layer.take(x), x[8:16])
    assert is_fused_qkv("blocks.0.attn.qkv.weight", (24, 8)) and not is_fused_qkv("x.qkv.weight", (20, 8))


def test_heads_dropped_even_when_shapes_agree_and_kept_on_request():
    """Classifier heads are dropped with a reason by default; exclude_heads=False keeps same-shape heads."""
    ms = [_model(str(i), vit_shapes(8, 1)) for i in range(2)]
    layers, dropped = select_layers(ms, ["all_2d"])
    assert "head.weight" in dropped and "classifier head" in dropped["head.weight"]
    layers, _ = select_layers(ms, ["all_2d"], exclude_heads=False)
    assert "head.weight" in [l.name for l in layers]
    assert is_head("fc.weight") and is_head("classifier.bias") and not is_head("blocks.0.mlp.fc1.weight")


def test_shape_mismatch_and_missing_tensors_reported():
    """Heads of different sizes and tensors missing in a model are dropped with reasons."""
    a, b = vit_shapes(8, 1, num_classes=10), vit_shapes(8, 1, num_classes=5)
    b.pop("blocks.0.mlp.fc2.weight")
    layers, dropped = select_layers([_model("a", a), _model("b", b)], ["all_2d"], exclude_heads=False)
    assert "shape differs" in dropped["head.weight"]
    assert "missing in ['b']" in dropped["blocks.0.mlp.fc2.weight"]


def test_regex_filters_and_unknown_kind():
    """A regex restricts the chosen kinds; an unknown kind is a clear error."""
    ms = [_model("a", vit_shapes(8, 2))]
    layers, _ = select_layers(ms, ["all"], regex=r"blocks\.1\..*fc1")
    assert [l.name for l in layers] == ["blocks.1.mlp.fc1.weight"]
    with pytest.raises(ValueError, match="unknown layer kind"):
        select_layers(ms, ["mlps"])
    assert "conv" in tensor_kinds("x.weight", (4, 3, 3, 3)) and "square_2d" in tensor_kinds("x.weight", (4, 4))


def test_gpt2_names():
    """GPT-2 (Hugging Face Conv1D naming, weights stored (in, out)): attn.c_proj is the attention output, mlp.c_fc /
    mlp.c_proj the MLP, and the fused attn.c_attn splits into q, k, v column blocks."""
    p = "transformer.h.0."
    assert {"attn_out", "dense"} <= tensor_kinds(p + "attn.c_proj.weight", (8, 8))
    assert {"mlp", "dense"} <= tensor_kinds(p + "mlp.c_fc.weight", (8, 32))
    assert {"mlp", "dense"} <= tensor_kinds(p + "mlp.c_proj.weight", (32, 8))
    assert not is_fused_qkv(p + "attn.c_attn.weight", (8, 24)) and is_fused_qkv_cols(p + "attn.c_attn.weight", (8, 24))
    ms = [_model("a", {p + "attn.c_attn.weight": (8, 24), p + "attn.c_proj.weight": (8, 8)})]
    layers, _ = select_layers(ms, ["value", "key"])
    assert [(l.name, l.cols) for l in layers] == [(p + "attn.c_attn.weight[k]", (8, 16)),
                                                   (p + "attn.c_attn.weight[v]", (16, 24))]
    w = np.arange(2 * 8 * 24).reshape(2, 8, 24)
    assert np.array_equal(layers[1].take(w), w[:, :, 16:]) and numel(layers[1], ms) == 64
    assert [l.name for l in select_layers(ms, ["all_2d"])[0]] == [p + "attn.c_attn.weight", p + "attn.c_proj.weight"]


def test_majority_architecture_kept():
    """Three ViTs and one model of another architecture: the odd one is excluded with a reason."""
    ms = [_model(str(i), vit_shapes(8, 1)) for i in range(3)] + [_model("resnet", {"conv1.weight": (8, 3, 7, 7)})]
    kept, excluded = split_architectures(ms)
    assert [m.id for m in kept] == ["0", "1", "2"] and "different architecture" in excluded["resnet"]
