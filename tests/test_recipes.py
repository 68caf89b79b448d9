"""data_gen.recipes: digests of the graph configs' recipes, and the results README flag for changed recipes."""
from __future__ import annotations

import data_gen.recipes as recipes
from analysis.report import recipes_line


def _write(d, name, text):
    (d / f"{name}.yaml").write_text(text)


def test_digest_follows_the_recipe_not_the_runtime(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "config_dir", lambda: tmp_path)
    _write(tmp_path, "base", "defaults:\n  - schema\n  - _self_\ndepth: 2\nworkers: auto\n")
    _write(tmp_path, "ft_x", "defaults:\n  - base\n  - _self_\nname: ft_x\nmethods:\n  full: {lr: 3e-4, epochs: 4}\n")
    _write(tmp_path, "child", "defaults:\n  - ft_x\n  - _self_\nname: child\nchildren: 3\n")
    first = {n: recipes.recipe_digest(n) for n in ("ft_x", "child")}
    assert all(first.values()) and first["ft_x"] != first["child"]
    # where and how a build runs (name, workers, seed, paths) is not the recipe
    _write(tmp_path, "base", "defaults:\n  - schema\n  - _self_\ndepth: 2\nworkers: 4\nseed: 7\n")
    assert {n: recipes.recipe_digest(n) for n in ("ft_x", "child")} == first
    # an epoch count changed in the parent changes every config built on it
    _write(tmp_path, "ft_x", "defaults:\n  - base\n  - _self_\nname: ft_x\nmethods:\n  full: {lr: 3e-4, epochs: 5}\n")
    assert recipes.changed_recipes(first) == ["child", "ft_x"]
    assert recipes.recipe_digest("gone") is None and recipes.changed_recipes({"gone": "0"}) == ["gone"]


def test_configs_read_finds_names_and_specs():
    knobs = {"graphs": {"a": "ft_mini", "b": {"data_gen": "lora_v_mini", "overrides": {"seed": 2}}},
             "label": "FT", "other": ["resnet_mini", 3, None]}
    assert recipes.configs_read(knobs) == ["ft_mini", "lora_v_mini", "resnet_mini"]
    assert recipes.configs_read({"x": "ft_mini_calib_s2"}) == []   # a graph folder name, not a config


def test_results_readme_flags_a_changed_recipe():
    now = recipes.recipe_digest("ft_mini")
    record = {"scale": "mini", "recipes": {"ft_mini": now, "lora_v_mini": "0" * 16}}
    line = recipes_line(record)
    assert line is not None and "lora_v_mini changed" in line and "ft_mini" not in line
    assert recipes_line({"scale": "mini", "recipes": {"ft_mini": now}}) is None
    assert recipes_line({"scale": "toy", "recipes": {"ft_mini": "0" * 16}}) is None
    assert recipes_line({"scale": "mini"}) is None   # made before results recorded their recipes


def test_experiments_record_the_graph_configs_they_read(cfg_factory):
    from analysis.report import graphs_read

    cfg = cfg_factory(["+experiment=table1", "scale=mini"])
    assert graphs_read(cfg, "table1") == ["ft_mini", "lora_f_mini", "lora_v_mini", "mixed_mini"]
    cfg = cfg_factory(["+experiment=default", "scale=mini"])
    assert graphs_read(cfg, "default") == [str(cfg.data_gen.name)]   # graph: null, the configured graph
