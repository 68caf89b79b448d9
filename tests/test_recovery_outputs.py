"""Output people can reuse (issue 13, item 8): model-card lines, GraphML, DOT, and tree.json checked against its
versioned schema in docs/tree.schema.json."""
from __future__ import annotations

import copy
import json
import re
import shutil

import jsonschema
import networkx as nx
import pytest

from recovery.export import model_card_lines
from recovery.synthetic import tiny_transformer_shapes
from tests.conftest import ROOT
from tests.recovery_inputs import forest, write_flat, write_truth

SCHEMA = json.loads((ROOT / "docs" / "tree.schema.json").read_text())


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    """A recovery run with a duplicate, a left-out file and the layer fallback, written to disk."""
    from recovery.stage import recover

    base = tmp_path_factory.mktemp("outputs")
    models, edges = forest(tiny_transformer_shapes(16, 2), n_trees=2, children=2, grandchildren=1)
    folder = write_flat(base / "models", models)
    shutil.copy(folder / "t1_c0.safetensors", folder / "t1_c0_again.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x05\x00")
    out = base / "out"
    res = recover(folder, ground_truth=write_truth(base / "truth.json", models, edges), output_dir=out, quiet=True)
    return res, out


def test_tree_json_follows_the_versioned_schema(recovered):
    res, out = recovered
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    doc = json.loads((out / "tree.json").read_text())
    validator.validate(doc)
    assert doc["schema_version"] == SCHEMA["properties"]["schema_version"]["const"] == 1
    assert set(doc["excluded"]) == {"broken", "t1_c0_again"} and doc["layer_selection"]["direction"]["fallback"]
    # the schema is not vacuous: documents breaking the contract are rejected
    for breaks in (lambda d: d.pop("schema_version"), lambda d: d["edges"][0].update(base_model_relation="merge"),
                   lambda d: d["nodes"][0].pop("ids"), lambda d: d["layer_selection"].pop("direction")):
        bad = copy.deepcopy(doc)
        breaks(bad)
        assert list(validator.iter_errors(bad)), breaks


def test_model_card_lines_per_model(recovered):
    res, out = recovered
    doc = json.loads((out / "tree.json").read_text())
    text = (out / "model_cards.md").read_text()
    for node in doc["nodes"]:
        if node["root"]:
            assert node["model_card"] == "" and f"## {node['id']}\nroot: no `base_model` line" in text
        else:
            lines = f"base_model: {node['base_model']}\nbase_model_relation: {node['base_model_relation']}"
            assert node["model_card"] == lines and f"## {node['id']}\n```yaml\n{lines}\n```" in text
    # the duplicate gets the same lines as the model it copies
    same = next(n for n in doc["nodes"] if n["id"] == "t1_c0")
    assert same["ids"] == ["t1_c0", "t1_c0_again"]
    assert f"## t1_c0_again\n(a duplicate of t1_c0: same weights, same metadata)\n```yaml\n{same['model_card']}" in text
    assert model_card_lines({"base_model": "my model: v1", "base_model_relation": "adapter"}) == \
        'base_model: "my model: v1"\nbase_model_relation: adapter'


def test_graphml_and_dot_hold_the_recovered_graph(recovered):
    res, out = recovered
    doc = json.loads((out / "tree.json").read_text())
    g = nx.read_graphml(out / "tree.graphml")
    assert g.is_directed() and set(g.nodes) == {n["id"] for n in doc["nodes"]}
    assert set(g.edges) == {(e["parent"], e["child"]) for e in doc["edges"]}
    for e in doc["edges"]:
        data = g.edges[e["parent"], e["child"]]
        assert data["base_model_relation"] == e["base_model_relation"]
        assert data["distance"] == pytest.approx(e["distance"])
    assert g.nodes["t1_c0"]["ids"] == "t1_c0,t1_c0_again" and g.nodes["t0_root"]["root"] is True
    dot = (out / "tree.dot").read_text()
    assert dot.startswith("digraph mother {") and dot.rstrip().endswith("}")
    arrows = re.findall(r'^  "([^"]+)" -> "([^"]+)" \[label="(\w+)"', dot, re.M)
    assert {(p, c) for p, c, _ in arrows} == {(e["parent"], e["child"]) for e in doc["edges"]}
    assert len(re.findall(r"subgraph cluster_\d+", dot)) == len(doc["trees"])
    assert set(res["paths"]) >= {"tree", "graphml", "dot", "model_cards", "metrics", "plot"}


def test_output_folder_checked_first_stale_outputs_removed_and_modes_plain(tmp_path):
    """An output_dir recovery cannot write is an error before any weight is read; a rerun without a ground truth
    removes the earlier run's metrics.json (it would read as this run's); outputs get the umask's mode, not 0600."""
    import os

    from common.errors import ConfigError
    from recovery.stage import recover

    models, edges = forest(tiny_transformer_shapes(16, 2), n_trees=1, children=2, grandchildren=0)
    folder = write_flat(tmp_path / "models", models)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile: exists and is not a folder"):
        recover(folder, output_dir=tmp_path / "afile", quiet=True)
    (tmp_path / "taken" / "tree.png").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"\['tree.png'\] exist there and are not files"):
        recover(folder, output_dir=tmp_path / "taken", quiet=True)
    out = tmp_path / "out"
    recover(folder, ground_truth=write_truth(tmp_path / "truth.json", models, edges), output_dir=out, quiet=True,
            plot=False)
    assert (out / "metrics.json").is_file()
    recover(folder, output_dir=out, quiet=True, plot=False)
    assert not (out / "metrics.json").exists() and (out / "tree.json").is_file()
    mask = os.umask(0o022)
    os.umask(mask)
    assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()} == {
        f.name: 0o666 & ~mask for f in out.iterdir()}
