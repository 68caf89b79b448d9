"""Typed stage options (common/schema.py, recovery/config.py, data_gen/config.py): a misspelled key fails when the
config is composed, with Hydra's message naming it, and options given as plain dicts are checked against the same
dataclasses."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from common.errors import ConfigError
from common.schema import check_values, merge_options
from tests.conftest import ROOT, compose

GRAPHS = sorted(p.stem for p in (ROOT / "conf" / "data_gen").glob("*.yaml"))


@pytest.fixture
def conf_copy(tmp_path) -> Path:
    """A copy of conf/ that a test adds a config file to."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    return tmp_path / "conf"


def compose_from(conf_dir: Path, overrides: list[str]):
    """conf_dir/config.yaml composed with Hydra's compose API."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def composition_error(conf_dir: Path, overrides: list[str]) -> str:
    """The message of the composition error (with its cause), which must occur."""
    with pytest.raises(ConfigCompositionException) as err:
        compose_from(conf_dir, overrides)
    return f"{err.value} {err.value.__cause__ or ''}"


# ------------------------------------------------------------------------------------------------ composition
def test_misspelled_recovery_option_in_a_config_file_fails_at_composition(conf_copy):
    (conf_copy / "recovery" / "mine.yaml").write_text("defaults:\n  - paper\n  - _self_\ndistance: {metric: l2}\n")
    assert compose_from(conf_copy, ["recovery=mine"]).recovery.distance.metric == "l2"
    (conf_copy / "recovery" / "typo.yaml").write_text("defaults:\n  - paper\n  - _self_\ndistance: {metrik: l2}\n")
    message = composition_error(conf_copy, ["recovery=typo"])
    assert "Key 'metrik' not in 'DistanceOptions'" in message and "full_key: recovery.distance.metrik" in message


def test_misspelled_recovery_option_on_the_command_line_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["+experiment=recover", "input=x", "recovery.distance.metrik=l2"])
    assert "recovery.distance.metrik" in str(err.value)
    assert "Key 'metrik' not in 'DistanceOptions'" in str(err.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["recovery.tree.c=abc"])
    assert "full_key: recovery.tree.c" in str(err.value.__cause__)


@pytest.mark.parametrize("block, key, schema", [
    ("methods:\n  full: {lrr: 0.001}\n", "data_gen.methods.full.lrr", "FullMethod"),             # a recipe key
    ("methods:\n  full: {lora_rank: 4}\n", "data_gen.methods.full.lora_rank", "FullMethod"),     # LoRA key, full
    ("methods:\n  qlora: {lr: 0.001}\n", "data_gen.methods.qlora", "Methods"),                   # a method
    ("chlidren: 3\n", "data_gen.chlidren", "DataGenConfig"),
    ("smoke: {step: 2}\n", "data_gen.smoke.step", "SmokeConfig"),
])
def test_misspelled_data_gen_key_in_a_config_file_fails_at_composition(conf_copy, block, key, schema):
    name = key.rsplit(".", 1)[-1]
    (conf_copy / "data_gen" / "typo.yaml").write_text(f"defaults:\n  - ft_mini\n  - _self_\nname: typo\n{block}")
    message = composition_error(conf_copy, ["data_gen=typo"])
    assert f"Key '{name}' not in '{schema}'" in message and f"full_key: {key}" in message


def test_keys_appended_with_plus_fail_before_any_stage_runs(tmp_path):
    """Hydra adds `+key=value` to any node, schema or not; run_stages checks the options again first."""
    import run

    for override, message in (("+recovery.distance.metrik=l2", "recovery.distance: unknown option 'metrik'"),
                              ("+data_gen.methods.full.lrr=0.1", "data_gen.methods.full: unknown option 'lrr'"),
                              ("+data_gen.chlidren=3", "data_gen: unknown option 'chlidren'")):
        cfg = compose(["stages=[]", override], output_dir=tmp_path)
        with pytest.raises(ConfigError, match=message):
            run.run_stages(cfg)
        assert not (tmp_path / "run.json").exists()


# ------------------------------------------------------------------------------------------------ valid configs
@pytest.mark.parametrize("name", GRAPHS)
def test_every_graph_config_composes_typed(name):
    from data_gen.config import DataGenConfig, FullMethod, LoraMethod

    dg = compose([f"data_gen={name}", "paths.graphs_dir=/nonexistent"], output_dir="/nonexistent").data_gen
    assert OmegaConf.get_type(dg) is DataGenConfig
    for method, block in dg.methods.items():
        assert block is None or OmegaConf.get_type(block) is {"full": FullMethod, "lora": LoraMethod}[method]


def test_recovery_configs_compose_typed_and_paper_yaml_states_the_schema_defaults():
    from recovery.config import RecoveryConfig, TreeOptions

    paper = compose(["recovery=paper"]).recovery
    assert OmegaConf.get_type(paper) is RecoveryConfig and OmegaConf.get_type(paper.tree) is TreeOptions
    assert OmegaConf.to_container(paper) == merge_options(RecoveryConfig, {}, "recovery")
    recommended = OmegaConf.to_container(compose(["recovery=recommended", "recovery.tree.c=1"]).recovery)
    assert recommended["tree"]["c"] == 1.0 and isinstance(recommended["tree"]["c"], float)
    # a mapping option replaces the schema's null instead of merging into a default mapping
    assert recommended["tree"]["cues"] == {"kurtosis": 1.0, "init_distance": 1.0}
    assert recommended["direction"]["cues"] is True and recommended["tree"]["orient"] == "root"


def test_null_method_keys_are_unset():
    """A composed method block holds every key, null where the config sets none: the graph's config and its jobs
    see only the keys set, so the recipe's defaults apply to the others."""
    from data_gen.graph import graph_config
    from data_gen.spec import build_spec

    cfg = compose(["data_gen=ft", "paths.graphs_dir=/nonexistent"], output_dir="/nonexistent")   # lora: null
    assert cfg.data_gen.methods.full.warmup_steps is None and cfg.data_gen.methods.lora is None
    dg = graph_config(cfg)
    assert set(dg["methods"]) == {"full"}
    assert set(dg["methods"]["full"]) == {"lr", "optimizer", "momentum", "epochs", "batch_size", "tasks"}
    recipe = build_spec(dg, seed=0)[-1]["recipe"]
    assert set(recipe) == {"method", "lr", "optimizer", "momentum", "epochs", "batch_size", "max_steps",
                           "weight_decay", "seed"}


# ------------------------------------------------------------------------------------------------ plain dicts
def test_plain_dict_options_are_checked_against_the_same_schemas():
    from data_gen.finetune import resolve_recipe
    from recovery.config import RecoveryConfig
    from recovery.mother import tree_options

    with pytest.raises(ConfigError, match=r"recovery.tree: unknown option 'orientation'; known: \['c', "):
        tree_options({"orientation": "root"})
    with pytest.raises(ConfigError, match=r"recovery.tree.orient must be one of \['edges', 'root'\], got 'roots'"):
        tree_options({"orient": "roots"})
    with pytest.raises(ConfigError, match=r"recovery.tree.c: Value 'abc' of type 'str' could not be converted"):
        tree_options({"c": "abc"})
    with pytest.raises(ConfigError, match="recipe: unknown option 'optimiser'"):
        resolve_recipe({"optimiser": "sgd"})
    with pytest.raises(ConfigError, match=r"recovery.distance.metric must be one of \['l2', 'rms', 'lora_rank', "):
        check_values(RecoveryConfig, {"distance": {"metric": "cosine"}}, "recovery")


def test_tree_cues_null_means_the_papers_kurtosis():
    from recovery.mother import tree_options

    assert tree_options(None)["cues"] == {"kurtosis": 1.0}
    assert tree_options({"cues": {}})["cues"] == {}
    assert tree_options({"cues": {"centrality": 1}})["cues"] == {"centrality": 1.0}


def test_recipe_defaults_and_types():
    from data_gen.finetune import resolve_recipe

    r = resolve_recipe({"method": "lora", "lora_alpha": 8, "lr": 1, "lora_targets": "fc1", "augment": "flip"})
    assert r["lora_alpha"] == 8 and isinstance(r["lora_alpha"], int)    # kept as given (peft records it)
    assert r["lr"] == 1.0 and isinstance(r["lr"], float)
    assert r["lora_targets"] == ["fc1"] and r["augment"] == ["flip"]
    assert (r["optimizer"], r["scheduler"], r["epochs"], r["max_steps"]) == ("adamw", "constant", 1, None)


@pytest.mark.parametrize("group, given, message", [
    ("cluster", {"n_trees": 2.5}, r"recovery.cluster.n_trees must be an integer >= 1, or one of \['auto', 'truth'\]"),
    ("cluster", {"n_trees": 0}, r"recovery.cluster.n_trees must be an integer >= 1"),
    ("cluster", {"n_trees": True}, r"recovery.cluster.n_trees must be an integer >= 1"),
    ("cluster", {"threshold": -1}, r"recovery.cluster.threshold must be a finite number > 0, or null, got -1"),
    ("cluster", {"min_gap_ratio": 0.5}, r"recovery.cluster.min_gap_ratio must be a finite number >= 1"),
    ("tree", {"c": -1}, r"recovery.tree.c must be a finite number >= 0, got -1"),
    ("tree", {"c": float("nan")}, r"recovery.tree.c must be a finite number, got nan"),
    ("tree", {"max_hops": 0}, r"recovery.tree.max_hops must be an integer >= 1, or null"),
    ("tree", {"missing_ratio": -5}, r"recovery.tree.missing_ratio must be a finite number > 0 and <= 1"),
    ("tree", {"cues": {"kurtosis": -1}}, r"recovery.tree.cues must map cues of \['kurtosis'"),
    ("tree", {"cues": {"kurtossis": 1}}, r"recovery.tree.cues must map cues of"),
    ("layers", {"regex": "(unclosed"}, r"recovery.layers.regex must be a valid Python regular expression"),
    ("distance", {"rank_tol": -1}, r"recovery.distance.rank_tol must be a finite number >= 0, or one of"),
    ("sparse", {"knn": 0}, r"recovery.sparse.knn must be an integer >= 1"),
])
def test_option_values_outside_their_range_name_the_option(group, given, message):
    """Values of the right type that make no sense (a negative weight, a fractional count, a broken regex, NaN)
    are ConfigErrors naming the option, through merge_options and through check_config (the Hydra path)."""
    from omegaconf import OmegaConf

    from common.schema import check_config, schema_of
    from recovery import config as rc

    schema = {"cluster": rc.ClusterOptions, "tree": rc.TreeOptions, "layers": rc.LayersOptions,
              "distance": rc.DistanceOptions, "sparse": rc.SparseOptions}[group]
    with pytest.raises(ConfigError, match=message):
        merge_options(schema, given, f"recovery.{group}")
    if not any(isinstance(v, float) and v != v for v in given.values()):
        cfg = OmegaConf.create({"recovery": OmegaConf.to_container(OmegaConf.structured(schema_of("recovery")))})
        cfg.recovery[group] = {**cfg.recovery[group], **given}
        with pytest.raises(ConfigError, match=message):
            check_config(cfg)


@pytest.mark.parametrize("override, message", [
    ("data_gen.num_threads=-2", r"data_gen.num_threads must be an integer >= 1, or null, got -2"),
    ("data_gen.workers=0", r"data_gen.workers must be an integer >= 1, or one of \['auto'\], got 0"),
    ("data_gen.workers=2.5", r"data_gen.workers must be an integer >= 1"),
    ("num_threads=0", r"data_gen.num_threads must be an integer >= 1"),
])
def test_data_gen_values_are_checked_in_the_whole_config(override, message):
    """The data_gen group's values point into the rest of the config (${num_threads}, ${paths...}): check_config
    resolves them there, so its range checks run on every composed config."""
    from common.schema import check_config

    check_config(compose(["data_gen=default"]))   # the shipped config passes
    with pytest.raises(ConfigError, match=message):
        check_config(compose(["data_gen=default", override]))
