"""The config tree composes, every experiment composes, and the command line behaves."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose

FILES = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
EXPERIMENTS = sorted(FILES | set(__import__("common.paths").paths.analysis_experiment_names()))


def test_default_config_composes_and_resolves(tmp_path):
    cfg = compose(output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.paths.root_dir == str(ROOT)
    assert cfg.paths.output_dir == str(tmp_path)
    assert cfg.seed == 0 and cfg.num_threads == 1  # conf/config.yaml's defaults


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    """Each conf/experiment/*.yaml composes and resolves (a broken one fails here)."""
    if name in FILES:
        text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
        assert text.lstrip().startswith("# @package _global_"), f"{name}.yaml must start with '# @package _global_'"
    cfg = compose([f"+experiment={name}"], output_dir=tmp_path)
    container = OmegaConf.to_container(cfg, resolve=False)
    assert container["stages"], f"{name} runs no stage"
    # resolve everything except values the user must supply on the command line (???)
    for key in cfg:
        if key in ("hydra",):
            continue
        try:
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        except Exception as e:  # MissingMandatoryValue is fine: the user supplies it
            if "MissingMandatoryValue" not in type(e).__name__:
                raise


def test_run_records_config_and_seed(tmp_path):
    import run

    cfg = compose(["stages=[]", "seed=123"], output_dir=tmp_path)
    assert run.run_stages(cfg) == {}
    assert "seed: 123" in (tmp_path / "config.yaml").read_text()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["seed"] == 123
    # the numeric environment that decides bit-identity: this machine's CPU model, BLAS builds, threads
    env = record["numeric_env"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert f"model name\t: {env['cpu']}" in cpuinfo.read_text()
    assert env["cpu_count"] == os.cpu_count() and env["machine"] == platform.machine()
    assert env["torch_blas"] in torch.__config__.show() and env["torch_threads"] == torch.get_num_threads()
    assert env["numpy_blas"].split()[0] == np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]


def test_results_record_paths_relative_to_the_project(tmp_path):
    """Paths inside the checkout are stored relative to it (results.json travels), others stay absolute."""
    from common.paths import from_portable, portable

    inside = ROOT / "graphs" / "ft_mini"
    assert portable(inside) == "graphs/ft_mini" and from_portable("graphs/ft_mini") == inside
    assert portable(tmp_path / "g") == str((tmp_path / "g").resolve())
    assert from_portable(portable(tmp_path / "g")) == (tmp_path / "g").resolve()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_composed_config(tmp_path):
    res = _cli("--cfg", "job", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "paths:" in res.stdout and "seed:" in res.stdout


def test_cli_misspelled_override_fails_clearly(tmp_path):
    res = _cli("seeed=1", cwd=tmp_path)
    assert res.returncode != 0
    assert "Could not override 'seeed'" in res.stderr


@pytest.mark.slow
def test_cli_writes_nothing_into_cwd(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = _cli("stages=[]", f"paths.log_dir={tmp_path / 'logs'}", cwd=cwd)
    assert res.returncode == 0, res.stderr
    assert list(cwd.iterdir()) == []
    assert list((tmp_path / "logs").rglob("run.json"))
