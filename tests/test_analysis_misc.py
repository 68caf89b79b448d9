"""Smoke tests at toy scale: running time (Table 7), Stable Diffusion (offline message; local stand-ins) and the
embedded default's report. Synthetic weights throughout: mechanics and ranges, not the paper's claims.
"""
from __future__ import annotations

import json
import shutil

import pytest

from analysis import stage
from analysis.experiments.stable_diffusion import HubUnavailableError
from recovery.synthetic import write_synthetic_graph


def _results(tmp_path, name):
    return json.loads((tmp_path / "results" / name / "results.json").read_text())


def test_runtime_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=runtime", "scale=toy"]))
    rows = _results(tmp_path, "runtime")["rows"]
    assert [r["models"] for r in rows] == [10, 50]
    for r in rows:
        assert r["distances_cpu_s"] > 0 and r["clustering_s"] > 0 and r["mdst_s"] > 0
        assert r["values per model"] == 64 * 64 and r["clusters_pure"] == 1.0  # 5 well separated families
    table = (tmp_path / "results" / "runtime" / "runtime.md").read_text()
    assert "Pairwise distances (CPU) paper" in table and "0.033 s" in table


def test_runtime_memory_cap_cuts_the_layer(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=runtime", "scale=toy", "analysis.runtime.max_gib=0.00001"]))
    rows = _results(tmp_path, "runtime")["rows"]
    assert all(r["values per model"] < r["layer values"] for r in rows)
    assert "cut to fit" in json.loads((tmp_path / "results" / "runtime" / "experiment.json").read_text())["notes"]


def test_stable_diffusion_offline_fails_clearly(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="cannot run offline"):
        stage.run(cfg_factory(["+experiment=stable_diffusion"]))
    assert not (tmp_path / "results" / "stable_diffusion").exists()


def test_stable_diffusion_with_local_stand_ins(cfg_factory, tmp_path, monkeypatch):
    """With the five files already in the cache folder nothing is downloaded (synthetic stand-ins here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    syn = write_synthetic_graph(tmp_path / "syn", trees=1, depth=1, children=4)
    models = tmp_path / "graphs" / "stable_diffusion_toy" / "models"
    models.mkdir(parents=True)
    for src, dst in zip(["root0", "root0-0", "root0-1", "root0-2", "root0-3"],
                        ["sd1.1", "sd1.2", "sd1.3", "sd1.4", "sd1.5"]):
        shutil.copy(syn / "models" / f"{src}.safetensors", models / f"{dst}.safetensors")
    stage.run(cfg_factory(["+experiment=stable_diffusion", "scale=toy"]))
    res = _results(tmp_path, "stable_diffusion")
    assert [r["model"] for r in res["rows"]] == ["sd1.1", "sd1.2", "sd1.3", "sd1.4", "sd1.5"]
    # The stand-ins are a star (sd1.1 = root0 plus its 4 independent children), so the recovered tree must be that
    # star whichever way its edges point; of the cards' edges (1.1 -> 1.2 -> {1.3, 1.4, 1.5}) it holds 1.1-1.2 only
    rows = res["rows"]
    assert rows[0]["true parent"] is None
    assert {frozenset((r["model"], r["recovered parent"])) for r in rows if r["recovered parent"]} == {
        frozenset(("sd1.1", m)) for m in ("sd1.2", "sd1.3", "sd1.4", "sd1.5")}
    assert all(r["correct"] == (r["true parent"] == r["recovered parent"]) for r in rows)
    assert res["edge_accuracy"] == sum(r["correct"] for r in rows if r["true parent"]) / 4 <= 0.25
    assert res["undirected_accuracy"] == 0.25
    assert (tmp_path / "results" / "stable_diffusion" / "stable_diffusion.png").is_file()


def test_readme_lists_stable_diffusion_as_not_run(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=resnet", "scale=toy"]))
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "## Not run here" in readme and "stable_diffusion" in readme


def test_default_report_toy(cfg_factory, tmp_path, capsys):
    stage.run(cfg_factory(["scale=toy"]))      # conf/analysis/default.yaml is the default group choice
    res = _results(tmp_path, "default")
    assert res["n_models"] == 14 and res["edge_accuracy"] == 1.0 and res["clustering_accuracy"] == 1.0  # synthetic
    assert sum(t["edges"] for t in res["trees"]) == 12 and all(t["correct"] == t["edges"] for t in res["trees"])
    assert (tmp_path / "results" / "default" / "tree.png").is_file()
    assert "| Model Graph | 14 | 12 |" in capsys.readouterr().out
