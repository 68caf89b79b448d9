"""analysis.stage: runs the named experiments in order and rebuilds results/README.md (a synthetic experiment)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from analysis import experiments, report, stage


def _fake_module(name: str, calls: list) -> types.ModuleType:
    """A tiny experiment following the module contract (synthetic numbers)."""
    mod = types.ModuleType(name)

    def compute(cfg):
        calls.append(name)
        return {"value": 0.5, "seed": int(cfg.seed)}

    def render(results, out_dir: Path):
        report.write_table(pd.DataFrame({"what": ["value"], "ours": [results["value"]]}), out_dir, name,
                           caption="fake")

    def describe(results):
        return {"title": f"Fake {name}", "paper": "1.0", "ours": f"{results['value']}", "notes": "synthetic"}

    mod.compute, mod.render, mod.describe = compute, render, describe
    mod.run = lambda cfg: report.run_experiment(cfg, name, compute, render, describe)
    return mod


def test_decorator_registers_module(monkeypatch):
    """`@experiment(name)` on a module's run registers that module under `name` (and refuses a second module)."""
    monkeypatch.setattr(experiments, "_REGISTRY", dict(experiments._REGISTRY))
    mod = _fake_module("fake_deco", [])
    monkeypatch.setitem(sys.modules, "tests._fake_deco", mod)
    mod.run.__module__ = "tests._fake_deco"
    experiments.experiment("fake_deco", order=-1)(mod.run)
    assert experiments.get("fake_deco").module is mod and next(iter(experiments.registry())) == "fake_deco"
    other = _fake_module("fake_other", [])
    monkeypatch.setitem(sys.modules, "tests._fake_other", other)
    other.run.__module__ = "tests._fake_other"
    with pytest.raises(ValueError, match="registered twice"):
        experiments.experiment("fake_deco")(other.run)


@pytest.fixture
def fake_experiments(monkeypatch):
    calls: list = []
    for name in ("fake_a", "fake_b"):
        monkeypatch.setitem(sys.modules, f"tests._fake_{name}", _fake_module(name, calls))
        mod = sys.modules[f"tests._fake_{name}"]
        monkeypatch.setitem(experiments._REGISTRY, name, experiments.Experiment(name, mod, 1e9))
    return calls


def test_stage_runs_in_order_and_writes_readme(cfg_factory, fake_experiments, tmp_path):
    cfg = cfg_factory(["analysis.experiments=[fake_b,fake_a]", "scale=toy", "seed=7"])
    out = stage.run(cfg)
    assert fake_experiments == ["fake_b", "fake_a"]
    res = tmp_path / "results"
    for name in ("fake_a", "fake_b"):
        assert (res / name / "results.json").is_file() and (res / name / f"{name}.tex").is_file()
    readme = Path(out["readme"]).read_text()
    assert "## Fake fake_a" in readme and "scale: **toy**" in readme and "seed: 7" in readme


def test_stopped_queue_leaves_a_readme_of_what_landed(cfg_factory, fake_experiments, tmp_path, monkeypatch):
    """A long queue killed half-way (here: the second experiment interrupted) has already rebuilt the README with the
    first one's section."""
    mod = sys.modules["tests._fake_fake_a"]
    monkeypatch.setattr(mod, "run", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt("stopped")))
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg_factory(["analysis.experiments=[fake_b,fake_a]", "scale=toy"]))
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "## Fake fake_b" in readme and "## Fake fake_a" not in readme


def test_stage_out_dir_override(cfg_factory, fake_experiments, tmp_path):
    cfg = cfg_factory(["analysis.experiments=[fake_a]", f"analysis.out_dir={tmp_path / 'elsewhere'}"])
    stage.run(cfg)
    assert (tmp_path / "elsewhere" / "fake_a" / "experiment.json").is_file()
    assert not (tmp_path / "results").exists()


def test_stage_unknown_name_fails_before_running(cfg_factory, fake_experiments):
    cfg = cfg_factory(["analysis.experiments=[fake_a,no_such_thing]"])
    with pytest.raises(KeyError, match="no_such_thing"):
        stage.run(cfg)
    assert fake_experiments == []


def test_stage_nothing_queued_fails(cfg_factory):
    with pytest.raises(ValueError, match="no analysis experiment is queued"):
        stage.run(cfg_factory(["analysis.experiments=[]", "analysis.queue.default=false"]))


def test_knob_files_queue_themselves_once_in_defaults_order(cfg_factory):
    """paper_mini names each experiment once (its defaults list); a queued one can be dropped; a list replaces."""
    import yaml

    cfg = cfg_factory(["+experiment=paper_mini"])
    listed = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "analysis" / "paper_mini.yaml")
                            .read_text())["defaults"]
    assert stage.experiment_names(cfg) == [d for d in listed if d not in ("base", "_self_")]
    assert stage.experiment_names(cfg)[0] == "calibration" and "experiments" not in listed
    dropped = stage.experiment_names(cfg_factory(["+experiment=paper_mini", "analysis.queue.table1=false"]))
    assert "table1" not in dropped and len(dropped) == len(listed) - 3
    assert stage.experiment_names(cfg_factory(["+experiment=table1"])) == ["table1"]
    assert stage.experiment_names(cfg_factory(["+experiment=paper_mini", "analysis.experiments=[deep]"])) == ["deep"]


def test_registry_names_have_config():
    """Every registered experiment has conf/analysis/<name>.yaml once its module exists."""
    root = Path(__file__).resolve().parents[1]
    for name in experiments.registry():
        assert (root / "conf" / "analysis" / f"{name}.yaml").is_file(), name


def test_rerender_redraws_from_results_json(cfg_factory, fake_experiments, tmp_path):
    """Tables are redrawn from results.json alone: compute is not called again."""
    import json

    stage.run(cfg_factory(["analysis.experiments=[fake_a]"]))
    folder = tmp_path / "results" / "fake_a"
    data = json.loads((folder / "results.json").read_text())
    data["value"] = 0.25
    (folder / "results.json").write_text(json.dumps(data))
    assert stage.rerender(tmp_path / "results") == ["fake_a"]
    assert fake_experiments == ["fake_a"] and "0.250" in (folder / "fake_a.md").read_text()
    record = json.loads((folder / "experiment.json").read_text())
    assert record["ours"] == "0.25" and record["title"] == "Fake fake_a"  # the record's words redone too
