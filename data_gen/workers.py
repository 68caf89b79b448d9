"""Worker processes of a local graph build: how many, which GPU each takes, and that none outlives the build.

`workers=auto` is one worker per visible GPU when the build trains on GPUs, else usable cores // torch threads per
node. Workers are spawned (no inherited torch state), pinned to their thread count and GPU before anything starts
CUDA in them, and die with the building process: PR_SET_PDEATHSIG on Linux, a polling thread elsewhere; SIGTERM of
the builder raises SystemExit so it can kill the running nodes (a resumed build rebuilds them).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

import torch

from common.errors import ConfigError

log = logging.getLogger("mother.data_gen")


def visible_gpus() -> list[str]:
    """CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (its own list when set)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def gpu_slots(workers: int, gpus: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker: GPUs dealt round robin (distinct while workers <= GPUs); no GPUs:
    None for each (the workers keep the parent's environment)."""
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def resolve_workers(value: Any, threads: int, gpus: list[str] | None = None) -> int:
    """Parallel node builds: an int, or "auto" = one per GPU when the build trains on GPUs (`gpus`), else usable
    CPU cores // torch threads per node (at least 1)."""
    if value in (None, "auto") and gpus:
        return len(gpus)
    if value in (None, "auto"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // max(threads, 1))
    if int(value) < 1:
        raise ConfigError(f"data_gen.workers must be >= 1 or auto, got {value!r}")
    return int(value)


def node_pool(workers: int, threads: int, slots: list[str | None] | None = None):
    """Worker processes for one graph build (spawned: no inherited torch state), each pinned to `threads`, to one
    entry of `slots` (its CUDA_VISIBLE_DEVICES; see `gpu_slots`) and tied to this process's life (`_init_worker`)."""
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for slot in slots or [None] * workers:
        queue.put(slot)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init_worker, initargs=(threads, os.getpid(), queue))


# linux/prctl.h: deliver a signal to this process when its parent thread dies.
PR_SET_PDEATHSIG = 1


def _init_worker(threads: int, parent_pid: int, slots: Any = None) -> None:
    """Pool worker set-up: die with the building process, take a GPU slot, then pin torch to `threads`.

    A worker whose parent is killed (SIGKILL gives it no chance to clean up) would otherwise go on training as an
    orphan. On Linux the kernel sends the worker SIGKILL when its parent dies (PR_SET_PDEATHSIG; the pool starts
    its workers from the thread that submits, the build's own thread, which lives as long as the pool); elsewhere
    a daemon thread polls the parent id. A parent that died before this ran is caught by the pid check.
    `slots` is a queue holding one CUDA_VISIBLE_DEVICES value per worker (None: keep the inherited one); each worker
    takes one before anything starts CUDA in it, so no two workers share a GPU while there are enough.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("worker %d: prctl(PR_SET_PDEATHSIG) failed (errno %d); it may outlive its parent",
                        os.getpid(), ctypes.get_errno())
    else:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)
    if slots is not None:
        slot = slots.get(timeout=60)
        if slot is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = slot
    torch.set_num_threads(threads)


def _exit_when_orphaned(parent_pid: int, every_s: float = 1.0) -> None:
    """End this process once its parent is gone (the portable fallback of PR_SET_PDEATHSIG)."""
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(1)


@contextlib.contextmanager
def sigterm_exits():
    """While a pool builds: SIGTERM raises SystemExit in this (main) thread, so data_gen.graph.build_graph stops its
    workers before the process ends. Python's default SIGTERM ends the process at once, and at exit the pool would
    wait for the running nodes. Outside the main thread signals cannot be handled; the workers still die with the
    process (`_init_worker`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kill_workers(before: set[int]) -> None:
    """SIGKILL the worker processes started since `before` (child pids that existed already) and reap them."""
    for proc in multiprocessing.active_children():
        if proc.pid not in before:
            proc.kill()
            proc.join(timeout=10)
