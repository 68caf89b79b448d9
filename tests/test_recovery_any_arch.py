"""Recovery with default settings on any architecture whose models share names and shapes (issue 13, item 2).

When the preferred layer kinds (timm / Hugging Face names) match nothing, recovery falls back to every 2-D weight,
says so in one warning and records the layers used in tree.json.
"""
from __future__ import annotations

import json

import pytest

from recovery.layers import NoLayerError
from recovery.synthetic import mlp_shapes, tiny_transformer_shapes, vit_shapes
from tests.recovery_inputs import forest, write_flat, write_truth

NAMINGS = {
    "mlp": (mlp_shapes((16, 32, 32, 10)), True),                 # layers.0.weight ...
    "own_transformer": (tiny_transformer_shapes(16, 2), True),     # blocks.0.attn.q.weight, blocks.0.ff.0.weight ...
    "hf_vit": (vit_shapes(16, 2, naming="hf"), False),             # vit.encoder.layer.0.attention.attention.query ...
    "timm_vit": (vit_shapes(16, 2), False),                        # blocks.0.attn.qkv.weight, blocks.0.mlp.fc1 ...
}


@pytest.mark.parametrize("naming", sorted(NAMINGS))
def test_default_recovery_on_any_naming(naming, cfg_factory, tmp_path):
    """The default recovery (the command's config, no option changed) recovers 2 trees x 7 models exactly."""
    from recovery.stage import run

    shapes, falls_back = NAMINGS[naming]
    models, edges = forest(shapes)
    folder = write_flat(tmp_path / "models", models)
    truth = write_truth(tmp_path / "truth.json", models, edges)
    result = run(cfg_factory(["+experiment=recover", f"input={folder}", f"ground_truth={truth}"]))
    assert result["metrics"]["edge_accuracy"] == 1.0 and result["metrics"]["clustering_accuracy"] == 1.0
    tree = json.loads((tmp_path / "out" / "tree.json").read_text())
    sel = tree["layer_selection"]
    assert sel["direction"]["fallback"] is falls_back and sel["distance"]["fallback"] is False
    assert sel["direction"]["kinds"] == ["dense"]
    assert sel["direction"]["used_kinds"] == (["all_2d"] if falls_back else ["dense"])
    assert sel["direction"]["n_layers"] == len(tree["direction_layers"]) > 0
    assert not any(name.startswith(("head.", "classifier.")) for name in tree["direction_layers"] + tree["layers"])
    layer_warnings = [w for w in result["warnings"] if w.startswith("layers:")]
    assert len(layer_warnings) == (1 if falls_back else 0)
    if falls_back:
        expected_2d = sorted(k for k, s in shapes.items() if len(s) == 2)
        assert sorted(tree["direction_layers"]) == expected_2d
        assert "direction kinds ['dense'] match no tensor" in layer_warnings[0]


def test_both_roles_fall_back_in_one_warning(tmp_path):
    """Distance and direction kinds that both match nothing: one warning naming both roles."""
    from recovery.weights import analyze_folder

    models, _ = forest(mlp_shapes((8, 16, 4)), n_trees=1, children=2, grandchildren=0)
    write_flat(tmp_path, models)
    res = analyze_folder(tmp_path, layers={"kinds": ["query"]}, direction={"kinds": ["mlp"]}, progress=False)
    fallbacks = [w for w in res.warnings if w.startswith("layers:")]
    assert len(fallbacks) == 1 and "distance kinds ['query']" in fallbacks[0] and "direction kinds ['mlp']" in fallbacks[0]
    assert res.layers == ["layers.0.weight", "layers.2.weight"] == res.direction_layers
    assert res.layer_selection["distance"]["used_kinds"] == ["all_2d"]


def test_conv_only_models_fall_back_to_kernels(tmp_path):
    """No 2-D weight at all (a conv net whose only matrix is its head): every kernel is used."""
    from recovery.weights import analyze_folder

    shapes = {"conv1.weight": (8, 3, 3, 3), "conv2.weight": (8, 8, 3, 3), "fc.weight": (10, 8)}
    models, _ = forest(shapes, n_trees=1, children=2, grandchildren=0)
    write_flat(tmp_path, models)
    res = analyze_folder(tmp_path, progress=False)
    assert res.layers == ["conv1.weight", "conv2.weight"] and res.layer_selection["distance"]["used_kinds"] == ["all_2d", "conv"]


def test_fallback_off_or_regex_is_an_error(tmp_path):
    """The user's own choice by regex, or fallback=false, keeps the clear error instead of falling back."""
    from recovery.weights import analyze_folder

    models, _ = forest(mlp_shapes((8, 16, 4)), n_trees=1, children=2, grandchildren=0)
    write_flat(tmp_path, models)
    with pytest.raises(NoLayerError, match=r"no layer matches kinds=\['dense'\].*fallback=false"):
        analyze_folder(tmp_path, layers={"fallback": False}, progress=False)
    with pytest.raises(NoLayerError, match=r"regex='attn'"):
        analyze_folder(tmp_path, direction={"kinds": ["all"], "regex": "attn"}, progress=False)
