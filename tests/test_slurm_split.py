"""`make test` passes on a machine without SLURM: tests/test_slurm.py, run where no SLURM tool is on PATH, skips
its cluster tests (saying how to run them) and passes the rest, instead of failing."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT

SLURM_TOOLS = {"sinfo", "sbatch", "srun", "salloc", "sacct", "scancel", "squeue", "scontrol", "sacctmgr"}


def _path_without_slurm(bin_dir: Path) -> str:
    """A PATH of one folder linking every program of the current PATH except SLURM's."""
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if entry.name in SLURM_TOOLS or target.exists() or not os.access(entry.path, os.X_OK):
                continue
            target.symlink_to(entry.path)
    return str(bin_dir)


@pytest.mark.slow
def test_slurm_module_skips_without_a_cluster(tmp_path):
    env = {**os.environ, "PATH": _path_without_slurm(tmp_path / "bin")}
    report = tmp_path / "report.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "tests/test_slurm.py", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={report}", f"--basetemp={tmp_path / 'base'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {}
    for case in cases:
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome[case.get("name")] = "failed" if failed else "skipped" if skipped is not None else "passed"
        if skipped is not None:
            message = skipped.get("message", "")
            assert "SLURM not reachable: no `sinfo` on PATH" in message and "bash .ci/run" in message, message
    assert "failed" not in outcome.values(), outcome
    assert outcome["test_launcher_config_maps_to_submitit_slurm_executor"] == "skipped"
    assert outcome["test_graph_build_on_slurm_resumes_and_matches_local"] == "skipped"
    assert outcome["test_recovery_sweep_on_slurm_collects_one_table"] == "skipped"
    assert outcome["test_launcher_config_composes_and_local_executor_needs_no_cluster"] == "passed"
    assert outcome["test_sigterm_in_training_counts_as_killed"] == "passed"
