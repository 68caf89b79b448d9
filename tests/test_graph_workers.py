"""A graph build's worker processes die with it: SIGKILL or SIGTERM of `python run.py` while two workers train
leaves no process of the build running (data_gen.workers: PR_SET_PDEATHSIG in each worker, a SIGTERM handler in
the parent), and a rerun finishes the graph with the weights of an uninterrupted build, bit for bit.

Linux only (/proc, prctl). Tiny graph: two built-in roots with one child each, trained in two workers for 20 steps;
the step-0 checkpoint of each child shows that both workers are training.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.io import read_json
from tests.conftest import ROOT, compose

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (sys.platform.startswith("linux") and Path("/proc/self/stat").is_file()),
                                 reason="needs Linux /proc (PR_SET_PDEATHSIG is Linux-only)")]

LEVEL1 = ("vit_a1-0", "vit_b1-0")
GRAPH = ["data_gen.name=kill", "data_gen.depth=1", "data_gen.children=1", "data_gen.progress=false",
         "data_gen.checkpoint_every=20",
         "data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a},"
         " {id: vit_b1, source: 'builtin:vit_b1', task: pretrain/mix_b}]",
         *(f"++data_gen.methods.{m}.{k}={v}" for m in ("full", "lora")
           for k, v in (("max_steps", 20), ("epochs", 7), ("batch_size", 32), ("n_train", 96), ("n_val", 64)))]


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below `root`."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = st
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state, start) in table.items():
            if ppid == parent and pid not in found and state != "Z":
                found[pid] = start
                frontier.append(pid)
    return found


def _alive(pid: int, start: int) -> bool:
    """The same process (not a reused pid) still exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] not in ("Z", "X")


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up after {timeout_s} s waiting for {what}")


def _args(tmp: Path, workers: int) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "stages=[data_gen]", "task_name=kill", f"data_gen.workers={workers}",
            f"paths.log_dir={tmp / 'logs'}", f"paths.graphs_dir={tmp / 'graphs'}", f"paths.data_dir={tmp / 'data'}",
            *GRAPH]


@pytest.fixture(scope="module")
def clean_hashes(tmp_path_factory) -> dict[str, str]:
    """sha256 per node of the same graph built without interruption (in this process, one worker)."""
    from data_gen.graph import build_graph

    tmp = tmp_path_factory.mktemp("clean")
    cfg = compose([f"paths.graphs_dir={tmp / 'graphs'}", f"paths.data_dir={tmp / 'data'}", "data_gen.workers=1",
                   *GRAPH], output_dir=tmp / "out")
    graph = read_json(build_graph(cfg)["graph_json"])
    return {n: graph["meta"][n]["sha256"] for n in graph["nodes"]}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_build_leaves_no_worker_and_resumes(tmp_path, clean_hashes, sig):
    graph_dir = tmp_path / "graphs" / "kill"
    log = tmp_path / "build.log"   # a file, not a pipe: surviving workers would hold a pipe open
    with open(log, "wb") as out:
        proc = subprocess.Popen(_args(tmp_path, 2), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        step0 = [graph_dir / "checkpoints" / node / "step_0.safetensors" for node in LEVEL1]
        _wait_for(lambda: all(p.is_file() for p in step0) or proc.poll() is not None, 300,
                  "both level-1 nodes to start training")
        assert proc.poll() is None, log.read_text()[-3000:]
        below = _descendants(proc.pid)
        workers = [pid for pid in below if _is_worker(pid)]
        assert len(workers) == 2, (below, workers)

        proc.send_signal(sig)
        proc.wait(timeout=120)
        expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM
        assert proc.returncode == expected, log.read_text()[-3000:]
        _wait_for(lambda: not any(_alive(pid, start) for pid, start in below.items()), 60,
                  f"the build's processes {sorted(below)} to end after {sig.name}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # never leave a stray build behind, whatever failed above
        except ProcessLookupError:
            pass
        proc.wait()

    partial = read_json(graph_dir / "graph.json")
    assert not partial["complete"] and set(partial["pending"]) == set(LEVEL1), partial["pending"]
    if sig != signal.SIGKILL:
        return   # resuming is the same after either signal: checked once
    roots = {node: (graph_dir / "nodes" / f"{node}.json").stat().st_mtime_ns for node in ("vit_a1", "vit_b1")}

    res = subprocess.run(_args(tmp_path, 1), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    graph = read_json(graph_dir / "graph.json")
    assert graph["complete"]
    assert {n: graph["meta"][n]["sha256"] for n in graph["nodes"]} == clean_hashes
    assert {n: (graph_dir / "nodes" / f"{n}.json").stat().st_mtime_ns for n in roots} == roots  # roots kept
