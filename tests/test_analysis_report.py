"""analysis.report: tables, figures, experiment records and the generated results/README.md (synthetic data)."""
from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import report  # noqa: E402


def _df() -> pd.DataFrame:
    return pd.DataFrame({"sub-graph": ["LoRA_V", "FT"], "acc": [1.0, 0.85], "n": [21, 21],
                         "note": ["a|b", None]})


def test_write_table_writes_three_formats(tmp_path):
    paths = report.write_table(_df(), tmp_path, "t1", caption="Edge accuracy (100%)")
    assert set(paths) == {"csv", "md", "tex"} and all(p.is_file() for p in paths.values())
    back = pd.read_csv(paths["csv"])
    assert back["acc"].tolist() == [1.0, 0.85]                 # CSV keeps full precision
    md = paths["md"].read_text()
    assert "| LoRA_V | 1.000 | 21 | a\\|b |" in md and "n/a" in md and md.startswith("*Edge accuracy")
    tex = paths["tex"].read_text()
    assert r"LoRA\_V & 1.000 & 21" in tex and r"100\%" in tex and r"\label{tab:t1}" in tex
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_table_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="no columns"):
        report.write_table(pd.DataFrame(), tmp_path, "x", caption="c")


def test_mean_std_and_compare():
    assert report.mean_std([1.0, 3.0]) == "2.000 ± 1.000"
    assert report.mean_std([]) == "n/a"
    assert "matches" in report.compare(0.93, 0.94)
    assert "differs" in report.compare(0.70, 0.94) and "lower" in report.compare(0.70, 0.94)


def test_save_figure_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = report.save_figure(fig, tmp_path, "line")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


def test_save_figure_writes_a_repeatable_vector_copy(tmp_path):
    """Beside the PNG a PDF for papers, byte-identical when drawn twice (no creation date inside)."""
    pdfs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="line")
        report.save_figure(fig, out, "line")
        pdfs.append((out / "line.pdf").read_bytes())
    assert pdfs[0][:5] == b"%PDF-" and pdfs[0] == pdfs[1]
    assert b"CreationDate" not in pdfs[0]


def test_record_and_readme(tmp_path):
    exp = tmp_path / "table1"
    report.write_table(_df(), exp, "table1", caption="cap")
    fig, _ = plt.subplots()
    report.save_figure(fig, exp, "tree")
    report.write_experiment_record(exp, experiment="table1", title="Table 1", scale="mini",
                                   command="python run.py +experiment=table1", paper="0.94", ours="0.80",
                                   notes="differs", files=["table1.md", "table1.csv", "tree.png"], seed=0)
    rec = json.loads((exp / "experiment.json").read_text())
    assert rec["scale"] == "mini" and rec["files"] == ["table1.csv", "table1.md", "tree.png"]
    readme = report.build_results_readme(tmp_path).read_text()
    assert "## Table 1" in readme and "`python run.py +experiment=table1`" in readme
    assert "| LoRA_V | 1.000" in readme and "![table1: tree](table1/tree.png)" in readme
    assert "[table1.csv](table1/table1.csv)" in readme


def test_inlined_markdown_links_point_into_their_folder(tmp_path):
    exp = tmp_path / "runtime"
    exp.mkdir()
    (exp / "bench.md").write_text("see [other](other.md), ![fig](fig.png), [web](https://x.org/a), [top](#t), "
                                  "[abs](/etc/x) and [up](../table1/t.md)\n")
    report.write_experiment_record(exp, experiment="runtime", title="T", scale="mini", command="c", paper="p",
                                   ours="o", notes="", files=["bench.md"], seed=0)
    readme = report.build_results_readme(tmp_path).read_text()
    assert ("see [other](runtime/other.md), ![fig](runtime/fig.png), [web](https://x.org/a), [top](#t), "
            "[abs](/etc/x) and [up](runtime/../table1/t.md)") in readme


def test_readme_flags_results_made_on_other_roots(tmp_path):
    from data_gen.roots import shipped_digests

    now = shipped_digests()
    assert now and all(len(h) == 64 for h in now.values())
    kw = dict(title="T", scale="mini", command="c", paper="p", ours="o", notes="", files=[], seed=0)
    report.write_experiment_record(tmp_path / "current", experiment="current", roots=now, **kw)
    old = {**now, "vit_a2": "0" * 64}
    report.write_experiment_record(tmp_path / "older", experiment="older", roots=old, **kw)
    report.write_experiment_record(tmp_path / "unknown", experiment="unknown", **kw)
    assert report.roots_line(json.loads((tmp_path / "current" / "experiment.json").read_text())) is None
    assert "vit_a2 changed" in report.roots_line(json.loads((tmp_path / "older" / "experiment.json").read_text()))
    assert "not recorded" in report.roots_line(json.loads((tmp_path / "unknown" / "experiment.json").read_text()))
    readme = report.build_results_readme(tmp_path).read_text()
    assert readme.count("- built-in roots:") == 2


def test_record_rejects_missing_files_and_bad_scale(tmp_path):
    kw = dict(experiment="x", title="X", command="c", paper="p", ours="o", notes="", seed=0)
    with pytest.raises(FileNotFoundError, match="nope.md"):
        report.write_experiment_record(tmp_path, scale="mini", files=["nope.md"], **kw)
    with pytest.raises(ValueError, match="scale"):
        report.write_experiment_record(tmp_path, scale="huge", files=[], **kw)


def test_readme_without_records(tmp_path):
    assert "No experiment has been run yet" in report.build_results_readme(tmp_path).read_text()


def test_a_queued_experiment_records_its_own_command(monkeypatch):
    """Run by a queue (paper_mini, a subset chosen with analysis.experiments), a result records the command that
    makes it alone; run by plain `python run.py`, no +experiment."""
    from omegaconf import OmegaConf

    from hydra.core.hydra_config import HydraConfig

    class Fake:
        overrides = OmegaConf.create({"task": ["+experiment=paper_mini", "num_threads=1",
                                               "analysis.experiments=[table1,deep]", "analysis.queue.deep=false"]})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Fake))
    cfg = OmegaConf.create({"task_name": "paper_mini", "analysis": {"command": None}})
    assert report.regenerate_command(cfg, "table1") == "python run.py +experiment=table1 num_threads=1"
    Fake.overrides = OmegaConf.create({"task": ["num_threads=1"]})   # plain `python run.py` (task_name: default)
    cfg = OmegaConf.create({"task_name": "default", "analysis": {"command": None}})
    assert report.regenerate_command(cfg, "default") == "python run.py num_threads=1"


def test_stages_line_flags_recoveries_not_told_the_papers_protocol():
    """An experiment that scores recoveries records analysis.stages; the README flags a record without it (made
    when graph.json's generalization roots told recovery where each root is) or with another setting."""
    from analysis.report import stages_line

    assert "not recorded" in stages_line({"experiment": "table1", "scale": "mini"})
    assert "analysis.stages=given" in stages_line({"experiment": "resnet", "scale": "mini", "stages": "given"})
    assert stages_line({"experiment": "table1", "scale": "mini", "stages": "none"}) is None
    assert stages_line({"experiment": "fig2_direction", "scale": "mini"}) is None   # scores no recovery
    assert stages_line({"experiment": "table1", "scale": "toy"}) is None


def test_analyze_with_the_papers_stages(tmp_path):
    """analysis.recover.analyze(stages="none") counts every model as specialization (graph.json's roots are
    generalization); "given" keeps graph.json's."""
    from analysis.recover import analyze
    from recovery.synthetic import vit_shapes, write_tree

    from common.io import read_json, write_json

    write_tree(tmp_path, vit_shapes(8, 1), {"r": ["a", "b"]}, ["r"])
    graph = read_json(tmp_path / "graph.json")
    write_json(tmp_path / "graph.json", {**graph, "stage": {**graph["stage"], "r": "generalization"}})
    assert analyze(tmp_path, {}, stages="given").stages == {"r": "generalization", "a": "specialization",
                                                           "b": "specialization"}
    assert set(analyze(tmp_path, {}, stages="none").stages.values()) == {"specialization"}


def test_ours_vs_paper_draws_both_numbers_and_says_when_the_paper_has_none():
    fig = report.ours_vs_paper([{"label": "FT", "ours": 0.91, "paper": 0.94},
                                {"label": "new", "ours": 0.5, "paper": None, "ours_err": 0.1},
                                {"label": "nan", "ours": 0.7, "paper": float("nan")}], title="t")
    ax = fig.axes[0]
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [0.91, 0.94, 0.5, 0.7]                     # no paper bar where the paper gives no number
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("paper: n/a") == 2 and "0.910" in texts and "0.940" in texts
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FT", "new", "nan"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours", "paper"]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.errorbar is not None for c in bars] == [False, False, True, False]   # "new"'s ours_err only
    plt.close(fig)
