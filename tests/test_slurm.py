"""SLURM scale-out against a real cluster (`bash ../shared/slurm/slurm_up.sh` starts a one-node one; .ci/run does).

The tests that need a cluster (marker `slurm`) skip, with the reason and how to run them, where no SLURM answers
(`sinfo` missing or failing) or `sacct` does not work (submitit needs it to see a job that died); the others run
anywhere. tests/test_slurm_split.py checks that this module passes with skips on a machine without SLURM. The graph build uses synthetic stand-ins for root loading and fine-tuning
(tests/slurm_fakes.py: 4x4 'models', deterministic steps, resumable step checkpoints); the sweep runs the real
recovery stage on that synthetic graph. Every job carries a name unique to the test and is cancelled at the end
if still queued; the test starts no daemon.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose

def _no_slurm_reason() -> str | None:
    """Why SLURM tests cannot run here, or None when a cluster answers (with accounting)."""
    for tool in ("sinfo", "sbatch", "sacct", "scancel", "squeue"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH: no SLURM client here"
    for cmd in (["sinfo", "-h", "-o", "%P %a"], ["sacct", "-n", "-X", "-S", "now"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` timed out: SLURM controller not answering"
        if res.returncode != 0:
            return f"`{' '.join(cmd)}` failed (rc {res.returncode}): {res.stderr.strip()[:200]}"
    return None


REASON = _no_slurm_reason()
HOW_TO_RUN = ("run them with `bash .ci/run` (starts the one-node cluster of ../shared/slurm/, runs the tests, stops "
              "it) or start one first with `bash ../shared/slurm/slurm_up.sh`")


def needs_slurm(test):
    """Mark `test` as needing a reachable SLURM cluster: skipped, saying why and how to run it, where none answers."""
    skip = pytest.mark.skipif(REASON is not None, reason=f"SLURM not reachable: {REASON}; {HOW_TO_RUN}")
    return pytest.mark.slurm(skip(test))


LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=5",
            "hydra.launcher.signal_delay_s=30"]
STEPS = 8          # fake fine-tuning steps per node
STEP_S = "0.75"    # seconds per fake step: long enough to interrupt a node mid-way


def _squeue(name: str) -> dict[str, str]:
    """{job id: state} of the queued/running jobs named `name`."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.fixture
def job_names():
    """Names for this test's jobs; anything still queued under them afterwards is cancelled and fails the test."""
    names: list[str] = []
    yield names
    end = time.time() + 60  # a job whose result is in may still be completing for a few seconds
    while time.time() < end and any(_squeue(name) for name in names):
        time.sleep(1)
    left = {name: _squeue(name) for name in names}
    for name, jobs in left.items():
        if jobs:
            subprocess.run(["scancel", "-n", name], check=False)
    assert not any(left.values()), f"jobs left behind: {left}"


def _graph_cfg(tmp_path: Path, name: str, graphs: str):
    """Config of a synthetic two-level graph: one root, two fine-tuned children."""
    from omegaconf import OmegaConf

    cfg = compose([f"paths.log_dir={tmp_path / 'logs'}", f"paths.graphs_dir={tmp_path / graphs}",
                   "data_gen=base", f"data_gen.name={name}", "data_gen.depth=1", "data_gen.children=2",
                   "data_gen.num_threads=1", "data_gen.progress=false", "++data_gen.max_resubmits=1", *LAUNCHER],
                  output_dir=tmp_path / f"out_{graphs}")
    OmegaConf.update(cfg, "data_gen.roots", [{"id": "r", "source": "fake:r"}], force_add=True)
    OmegaConf.update(cfg, "data_gen.methods", {"full": {"tasks": ["t/x", "t/y"], "lr": 0.1, "epochs": 1,
                                                        "batch_size": 4, "max_steps": STEPS}}, force_add=True)
    return cfg


def _launcher() -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from data_gen.slurm import launcher_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return launcher_config(hydra_compose("config", overrides=LAUNCHER, return_hydra_config=True))


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def test_launcher_config_composes_and_local_executor_needs_no_cluster(tmp_path):
    """The slurm/local launcher configs compose and stay overridable; the local one becomes a submitit local
    executor on any machine."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from data_gen.slurm import launcher_config, make_executor

    launcher = _launcher()
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["cpus_per_task"] == 1 and launcher["max_num_timeout"] == 3

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        local = launcher_config(hydra_compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True))
    assert type(make_executor(local, tmp_path / "submitit", name="x")._executor).__name__ == "LocalExecutor"


@needs_slurm
def test_launcher_config_maps_to_submitit_slurm_executor(tmp_path):
    """The slurm launcher config becomes a submitit SLURM executor with its resources (submitit needs `srun`)."""
    from data_gen.slurm import make_executor

    ex = make_executor(_launcher(), tmp_path / "submitit", name="x")
    assert type(ex._executor).__name__ == "SlurmExecutor"
    assert ex._executor.parameters["cpus_per_task"] == 1 and ex._executor.max_num_timeout == 3


@pytest.mark.slow
@needs_slurm
def test_graph_build_on_slurm_resumes_and_matches_local(tmp_path, job_names, monkeypatch):
    """Two-level synthetic graph, one array per level: one level-1 task is preempted (requeued by submitit),
    the other killed with scancel (resubmitted by the driver); both resume from their last step checkpoint,
    nothing finished is rebuilt on a rerun, and every node's weights equal a local build's bit for bit."""
    from common.io import read_json
    from data_gen.graph import build_graph
    from submitit.slurm.slurm import SlurmJobEnvironment

    from data_gen.slurm import build_graph_slurm
    from tests.slurm_fakes import fake_finetune, fake_load_root, fake_load_task

    monkeypatch.setenv("MOTHER_FAKE_STEP_S", STEP_S)   # inherited by the SLURM jobs (sbatch --export=ALL)
    monkeypatch.chdir(ROOT)                             # the jobs import tests.slurm_fakes from here
    name = f"slurmtest{os.getpid()}"
    job_names += [f"{name}_L0", f"{name}_L1"]
    cfg = _graph_cfg(tmp_path, name, "graphs_slurm")
    fakes = dict(finetune_fn=fake_finetune, load_root_fn=fake_load_root, load_task_fn=fake_load_task)
    graph_dir = Path(cfg.data_gen.dir)

    result: dict = {}
    def build():
        try:
            result["summary"] = build_graph_slurm(cfg, launcher=_launcher(), **fakes)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = e
    thread = threading.Thread(target=build, daemon=True)
    thread.start()

    # Interrupt both level-1 nodes once each has saved step 2 of STEPS.
    ckpt = lambda node, k: graph_dir / "checkpoints" / node / f"step_{k}.safetensors"  # noqa: E731
    _wait_for(lambda: ckpt(f"r-0", 2).exists() and ckpt(f"r-1", 2).exists() or "error" in result, 120,
              "both level-1 nodes to reach step 2")
    assert "error" not in result, result.get("error")
    jobs = _squeue(f"{name}_L1")
    ids = sorted(jobs, key=lambda j: int(j.split("_")[1]))  # array task 0 is r-0, task 1 is r-1
    assert len(ids) == 2 and all(jobs[i] == "RUNNING" for i in ids), jobs
    # Time limit near / preemption notice: SLURM sends submitit's signal (sbatch --signal=USR2@signal_delay_s);
    # submitit checkpoints the task and requeues it (scontrol requeue) with the same arguments.
    subprocess.run(["scancel", f"--signal={SlurmJobEnvironment.USR_SIG}", ids[0]], check=True)
    # A hard kill (OOM killer, node loss): the process dies without a result; the driver resubmits the node.
    os.kill(int((graph_dir / "pids" / "r-1.txt").read_text()), signal.SIGKILL)
    # SLURM holds a requeued job back for ~2 minutes (BeginTime); release it now to keep the test short.
    _wait_for(lambda: _squeue(f"{name}_L1").get(ids[0]) == "PENDING" or "error" in result, 60, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={ids[0]}", "StartTime=now"], check=True)

    thread.join(timeout=240)
    assert not thread.is_alive(), "SLURM graph build did not finish within 240 s"
    if "error" in result:
        raise result["error"]
    summary = result["summary"]
    assert summary["complete"] and summary["nodes"] == 3
    # The killed node is resubmitted by the driver. The preempted one is normally requeued by submitit, but on a
    # loaded machine the driver can read its state as failed before the requeue shows and resubmit it instead
    # (seen once in CI); either way it must resume from its checkpoint, which is checked next.
    assert "r-1" in summary["resubmitted"] and set(summary["resubmitted"]) <= {"r-0", "r-1"}

    # Both interrupted nodes started twice, the second time from a saved step > 0, not from scratch.
    for node in ("r-0", "r-1"):
        starts = [int(x) for x in (graph_dir / "starts" / f"{node}.txt").read_text().split()]
        assert len(starts) == 2 and starts[0] == 0 and 2 <= starts[1] < STEPS, (node, starts)

    # Rerun: everything is done, nothing is submitted or rebuilt.
    again = build_graph_slurm(cfg, launcher=_launcher(), **fakes)
    assert again["built"] == [] and sorted(again["skipped"]) == ["r", "r-0", "r-1"]
    assert all(len((graph_dir / "starts" / f"{n}.txt").read_text().split()) == 2 for n in ("r-0", "r-1"))

    # Same graph as a local (in-process) build of the same config.
    local_cfg = _graph_cfg(tmp_path, name, "graphs_local")
    monkeypatch.setenv("MOTHER_FAKE_STEP_S", "0")
    build_graph(local_cfg, **fakes)
    slurm_g = read_json(graph_dir / "graph.json")
    local_g = read_json(Path(local_cfg.data_gen.dir) / "graph.json")
    assert slurm_g["nodes"] == local_g["nodes"] == ["r", "r-0", "r-1"]
    assert slurm_g["edges"] == local_g["edges"] == [["r", "r-0"], ["r", "r-1"]]
    for node in slurm_g["nodes"]:
        # Equal tensors and metadata. Not file sha256: safetensors 0.8 writes a metadata dict of 2+ keys in a
        # per-process random order, so equal content need not give equal bytes.
        assert _weights(graph_dir, node) == _weights(Path(local_cfg.data_gen.dir), node), node
        assert slurm_g["meta"][node]["val_accuracy"] == local_g["meta"][node]["val_accuracy"], node


def _weights(graph_dir: Path, node: str) -> tuple[dict, dict]:
    """(metadata, {name: tensor bytes}) of a node's weights file."""
    from safetensors import safe_open

    with safe_open(graph_dir / "models" / f"{node}.safetensors", "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


@pytest.mark.slow
@needs_slurm
def test_recovery_sweep_on_slurm_collects_one_table(tmp_path, job_names):
    """A multirun over recovery.tree.c through hydra/launcher=slurm (one array of 2 jobs) on a synthetic graph;
    collect_sweep and scripts/slurm/collect_sweep.py turn the jobs' metrics.json into one table."""
    from omegaconf import OmegaConf

    from analysis.sweep import collect_sweep
    from data_gen.graph import build_graph
    from tests.slurm_fakes import fake_finetune, fake_load_root, fake_load_task

    cfg = _graph_cfg(tmp_path, "sweepgraph", "graphs")
    OmegaConf.update(cfg, "data_gen.roots", [{"id": "a", "source": "fake:a"}, {"id": "b", "source": "fake:b"}])
    build_graph(cfg, finetune_fn=fake_finetune, load_root_fn=fake_load_root, load_task_fn=fake_load_task)
    graph_dir = Path(cfg.data_gen.dir)
    name = f"sweeptest{os.getpid()}"
    job_names.append(name)
    cmd = [sys.executable, "run.py", "-m", "+experiment=recover", f"input={graph_dir}",
           f"ground_truth={graph_dir / 'graph.json'}", "recovery.plot=false", "recovery.direction.kinds=[all_2d]",
           "recovery.tree.c=0.0,0.3", f"paths.log_dir={tmp_path / 'logs'}", *LAUNCHER, f"hydra.launcher.name={name}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "recover" / "multiruns").iterdir()
    assert len(list((sweep / ".submitit").glob("*_1"))) == 1  # ran as one SLURM array: tasks <id>_0, <id>_1

    df = collect_sweep(sweep, "metrics.json", fields=["edge_accuracy", "clustering_accuracy", "n_edges_true"])
    assert list(df.columns) == ["job", "recovery.tree.c", "status", "edge_accuracy", "clustering_accuracy",
                                "n_edges_true"]
    assert df["recovery.tree.c"].tolist() == [0.0, 0.3] and (df["status"] == "ok").all()
    assert df["edge_accuracy"].between(0, 1).all() and df["clustering_accuracy"].between(0, 1).all()
    assert (df["n_edges_true"] == 4).all()  # 2 roots x 2 children

    out = subprocess.run([sys.executable, "scripts/slurm/collect_sweep.py", str(sweep), "--out", str(tmp_path / "t"),
                          "--fields", "edge_accuracy"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "sweep.csv").read_text().splitlines()[0] == "job,recovery.tree.c,status,edge_accuracy"
    assert "| recovery.tree.c |" in out.stdout


def test_sigterm_in_training_counts_as_killed(tmp_path):
    """Lightning raises SIGTERMException after a SIGTERM: a SystemExit, which submitit does not store as an error
    result, so the node counts as killed and is resubmitted; any other error propagates as itself (and the
    driver raises it). Synthetic fine-tunes."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from data_gen.slurm import NodeTask
    from data_gen.spec import build_spec
    from tests.slurm_fakes import fake_load_root

    dg = {"name": "t", "roots": [{"id": "r", "source": "fake:r"}], "depth": 1, "children": 1, "image_size": 8,
          "methods": {"full": {"tasks": ["t/x", "t/y"], "lr": 0.1, "epochs": 1, "batch_size": 4}}}
    root, child = build_spec(dg, 0)

    def stopped(**_):
        raise SIGTERMException()

    def broken(**_):
        raise ValueError("a bug")

    assert NodeTask(tmp_path, {"load_root_fn": fake_load_root})(root) == {"id": "r", "built": True}
    assert NodeTask(tmp_path, {"load_root_fn": fake_load_root})(root) == {"id": "r", "built": False}
    with pytest.raises(SystemExit):
        try:
            NodeTask(tmp_path, {"finetune_fn": stopped, "load_task_fn": lambda *a, **k: None})(child)
        except Exception:  # what submitit catches to write an error result
            pytest.fail("SIGTERM stop was caught as an ordinary error")
    with pytest.raises(ValueError, match="a bug"):
        NodeTask(tmp_path, {"finetune_fn": broken, "load_task_fn": lambda *a, **k: None})(child)
