"""data_gen's layers import one way, models <- finetune <- pretraining <- roots <- sources: no module imports a
layer above it, not even inside a function (the old models -> roots -> finetune -> models cycle was hidden so)."""
from __future__ import annotations

import ast

import pytest

from common.paths import project_root

LAYERS = ["data_gen.models", "data_gen.finetune", "data_gen.pretraining", "data_gen.roots", "data_gen.sources"]


def imported_modules(module: str) -> set[str]:
    """Every module named by an import statement anywhere in `module`'s file (top level and inside functions)."""
    tree = ast.parse((project_root() / (module.replace(".", "/") + ".py")).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from data_gen import roots
    return names


@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_no_module_imports_a_layer_above(i):
    above = set(LAYERS[i + 1:]) & imported_modules(LAYERS[i])
    assert not above, f"{LAYERS[i]} imports {sorted(above)}, a layer above it"


def test_the_check_sees_function_level_imports(tmp_path, monkeypatch):
    """The old cycle: models imported roots inside load_root; the parser must see such an import."""
    (tmp_path / "data_gen").mkdir()
    (tmp_path / "data_gen" / "models.py").write_text("def load_root():\n    from data_gen import roots\n")
    monkeypatch.setattr("tests.test_layering.project_root", lambda: tmp_path)
    assert "data_gen.roots" in imported_modules("data_gen.models")
