"""Experiment loggers through the real command line: `logger=csv` and `logger=wandb` (offline, no network) log the
fine-tune curves of a graph build and, at the end of an analysis or recovery run, its metrics, tables and tree.png
(common/tracking.py). A tiny graph (two trees of root + one child, a few training steps) keeps it short."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.io import read_json
from common.tracking import flatten_metrics, log_run, logger_configs
from tests.conftest import ROOT, compose

PNG = b"\x89PNG\r\n\x1a\n"
TINY_GRAPH = ["data_gen.name=tiny", "data_gen.depth=1", "data_gen.children=1", "data_gen.progress=false",
              "data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a},"
              " {id: vit_b1, source: 'builtin:vit_b1', task: pretrain/mix_b}]",
              *(f"++data_gen.methods.{m}.{k}={v}" for m in ("full", "lora")
                for k, v in (("max_steps", 3), ("epochs", 1), ("batch_size", 32), ("n_train", 96), ("n_val", 64)))]


def _paths(tmp: Path) -> list[str]:
    return [f"paths.log_dir={tmp / 'logs'}", f"paths.graphs_dir={tmp / 'graphs'}", f"paths.data_dir={tmp / 'data'}",
            f"paths.results_dir={tmp / 'results'}"]


def _cli(tmp: Path, *args: str, env: dict | None = None) -> Path:
    """Run `python run.py ARGS` in `tmp`; return its run folder (the only one of its task)."""
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp, capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    task = next(a.split("=", 1)[1] for a in args if a.startswith("task_name="))
    (run_dir,) = (tmp / "logs" / task / "runs").iterdir()
    return run_dir


def _offline_env(tmp: Path) -> dict:
    """This environment without any wandb mode setting (the config's default decides), wandb's files in tmp."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "MOTHER_WANDB_OFFLINE", "WANDB_API_KEY")}
    env.update(WANDB_SILENT="true", WANDB_DIR=str(tmp / "wandb_dir"), WANDB_CACHE_DIR=str(tmp / "wandb_cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb_config"), WANDB_DATA_DIR=str(tmp / "wandb_data"))
    return env


def _read_csv(path: Path) -> dict[str, float]:
    import pandas as pd

    frame = pd.read_csv(path)
    assert list(frame.columns) == ["metric", "value"]
    return dict(zip(frame["metric"], frame["value"]))


def _one_offline_run(run_dir: Path) -> Path:
    (run,) = (run_dir / "wandb").glob("offline-run-*")   # offline: nothing was sent
    return run


@pytest.fixture(scope="module")
def csv_default(tmp_path_factory):
    """`python run.py logger=csv` on the tiny graph: builds it (2 fine-tunes), recovers it, reports."""
    tmp = tmp_path_factory.mktemp("csv_default")
    return tmp, _cli(tmp, "logger=csv", "task_name=default", *_paths(tmp), *TINY_GRAPH)


def test_logger_groups_compose_to_one_level(tmp_path):
    """conf/logger/<name>.yaml holds {<name>: {...}} under the `logger` package (not logger.logger.<name>)."""
    assert logger_configs(compose(["logger=none"], output_dir=tmp_path)) == {}
    assert set(logger_configs(compose(["logger=csv"], output_dir=tmp_path))) == {"csv"}
    wandb = logger_configs(compose(["logger=wandb"], output_dir=tmp_path))["wandb"]
    assert wandb["_target_"].endswith("WandbLogger") and wandb["offline"] is True   # offline unless asked


def test_wandb_online_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("MOTHER_WANDB_OFFLINE", "false")
    assert logger_configs(compose(["logger=wandb"], output_dir=tmp_path))["wandb"]["offline"] is False
    monkeypatch.delenv("MOTHER_WANDB_OFFLINE")
    overrides = ["logger=wandb", "logger.wandb.offline=false"]
    assert logger_configs(compose(overrides, output_dir=tmp_path))["wandb"]["offline"] is False


def test_flatten_metrics_keeps_finite_numbers():
    import numpy as np

    nested = {"a": 1, "b": {"c": np.float64(0.5), "d": [1, 2], "e": None, "f": "x", "g": float("nan"),
                            "h": True}}
    assert flatten_metrics(nested, "run/") == {"run/a": 1.0, "run/b/c": 0.5, "run/b/h": 1.0}


def test_no_logger_logs_nothing(tmp_path):
    import pandas as pd

    cfg = compose(["logger=none"], output_dir=tmp_path)
    assert log_run(cfg, "recovery", metrics={"x": 1.0}, tables={"t": pd.DataFrame({"a": [1]})}) == []
    assert list(tmp_path.iterdir()) == []


def test_csv_run_folder_holds_metrics_tables_images_and_files(tmp_path, caplog):
    import pandas as pd

    image, doc = tmp_path / "tree.png", tmp_path / "tree.json"
    image.write_bytes(PNG + b"rest")
    doc.write_text('{"nodes": []}')
    cfg = {"logger": {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": str(tmp_path / "out"),
                              "name": "csv"}}}
    (where,) = log_run(cfg, "recovery", metrics={"edge_accuracy": 0.5, "per_tree/a/accuracy": 1.0},
                       tables={"edges": pd.DataFrame({"parent": ["a"], "child": ["b"]})},
                       images={"tree": image, "gone": tmp_path / "missing.png"}, files={"tree.json": doc})
    folder = tmp_path / "out" / "csv" / "recovery"
    assert Path(where) == folder
    assert _read_csv(folder / "metrics.csv") == {"edge_accuracy": 0.5, "per_tree/a/accuracy": 1.0}
    assert (folder / "tables" / "edges.csv").read_text().splitlines() == ["parent,child", "a,b"]
    assert (folder / "images" / "tree.png").read_bytes() == image.read_bytes()
    assert (folder / "files" / "tree.json").read_text() == '{"nodes": []}'
    assert not (folder / "images" / "gone.png").exists() and "missing.png" in caplog.text


def test_unknown_logger_shape_is_named(tmp_path):
    with pytest.raises(ValueError, match="logger 'csv' has no _target_"):
        logger_configs({"logger": {"csv": {"save_dir": str(tmp_path)}}})


@pytest.mark.slow
def test_cli_csv_logs_finetunes_and_the_default_report(csv_default):
    tmp, run_dir = csv_default
    for node in ("vit_a1-0", "vit_b1-0"):                    # fine-tune curves, one folder per node
        curves = (run_dir / "csv" / node / "metrics.csv").read_text()
        assert "train/loss" in curves and "val/acc" in curves
    logged = run_dir / "csv" / "analysis"
    metrics = _read_csv(logged / "metrics.csv")
    expected = json.loads((tmp / "results" / "default" / "results.json").read_text())
    for key in ("edge_accuracy", "clustering_accuracy", "undirected_accuracy", "n_models"):
        assert metrics[f"default/{key}"] == pytest.approx(float(expected[key])), key
    assert (logged / "images" / "default" / "tree.png").read_bytes()[:8] == PNG
    assert (logged / "images" / "default" / "tree.png").read_bytes() == \
        (tmp / "results" / "default" / "tree.png").read_bytes()
    table = (logged / "tables" / "default" / "default.csv").read_text().splitlines()
    assert table[0].startswith("tree (true root),models,edges,correct,accuracy") and len(table) == 4
    assert json.loads((logged / "files" / "default" / "results.json").read_text()) == expected


@pytest.mark.slow
def test_cli_wandb_offline_by_default_logs_finetunes_and_the_default_report(tmp_path):
    """With no WANDB_MODE set: each fine-tune and the report are offline wandb runs holding metrics, the table and
    the tree figure. One tree here (root + child) keeps the build short."""
    one_tree = [a for a in TINY_GRAPH if not a.startswith("data_gen.roots")]
    one_tree.append("data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a}]")
    run_dir = _cli(tmp_path, "logger=wandb", "task_name=wb", "data_gen.workers=1", *_paths(tmp_path), *one_tree,
                   env=_offline_env(tmp_path))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and not list((run_dir / "wandb").glob("run-*"))   # fine-tune + report, both offline
    report = next(r for r in runs if list(r.glob("files/media/images/**/*.png")))
    (image,) = report.glob("files/media/images/images/default/tree*.png")
    assert image.read_bytes()[:8] == PNG
    (table,) = report.glob("files/media/table/tables/default/default*.table.json")
    assert "Model Graph" in table.read_text()
    (record,) = report.glob("run-*.wandb")
    data = record.read_bytes()
    for key in (b"default/edge_accuracy", b"default/clustering_accuracy", b"images/default/tree",
                b"tables/default/default"):
        assert key in data, key
    assert (report / "files" / "default" / "results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_cli_recovery_run_logs_metrics_tables_and_tree(csv_default, tmp_path, logger):
    """`+experiment=recover ... logger=csv|wandb`: the recovery's metrics, edge/node tables and tree.png."""
    graph = csv_default[0] / "graphs" / "tiny"
    run_dir = _cli(tmp_path, "+experiment=recover", f"input={graph}", f"ground_truth={graph / 'graph.json'}",
                   f"logger={logger}", "task_name=rec", f"paths.log_dir={tmp_path / 'logs'}",
                   env=_offline_env(tmp_path))
    if logger == "csv":
        logged = run_dir / "csv" / "recovery"
        metrics = _read_csv(logged / "metrics.csv")
        assert metrics["n_models"] == 4 and metrics["n_edges"] == 2
        # the logged numbers are the recovery's own (metrics.json beside tree.json), not recomputed or rounded
        written = read_json(run_dir / "metrics.json")
        assert metrics["edge_accuracy"] == written["edge_accuracy"] and metrics["edge_accuracy"] * 2 in (0, 1, 2)
        assert "per_tree/vit_a1/accuracy" in metrics
        edges = (logged / "tables" / "edges.csv").read_text().splitlines()
        assert edges[0] == "parent,child,distance,l2,base_model_relation" and len(edges) == 3
        assert (logged / "tables" / "nodes.csv").read_text().count("\n") == 5
        assert (logged / "images" / "tree.png").read_bytes() == (run_dir / "tree.png").read_bytes()
        assert (logged / "files" / "tree.json").read_bytes() == (run_dir / "tree.json").read_bytes()
    else:
        run = _one_offline_run(run_dir)
        (image,) = run.glob("files/media/images/images/tree*.png")
        assert image.read_bytes()[:8] == PNG
        assert len(list(run.glob("files/media/table/tables/*.table.json"))) == 2   # edges, nodes
        data = next(run.glob("run-*.wandb")).read_bytes()
        assert b"edge_accuracy" in data and b"n_models" in data
        assert (run / "files" / "tree.json").read_bytes() == (run_dir / "tree.json").read_bytes()
