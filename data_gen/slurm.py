"""Build a model graph on SLURM (or local processes) through submitit: one job array per level.

The graph's nodes (data_gen.spec) are grouped by level; level L goes out as one submitit array of
`data_gen.graph.build_node` calls once every node of level L-1 is done, so a node always finds its parent's
weights. The array's resources come from the Hydra launcher config (`hydra/launcher=slurm`, see
conf/hydra/launcher/slurm.yaml), the same one multirun sweeps use. Each array task trains one node on one GPU
when `data_gen.accelerator` is not cpu: a launcher that leaves `gpus_per_node` null asks for one GPU per task
(`gpu_launcher`); the paper configs (accelerator auto) thus ask for a GPU, the built-in mini graphs (cpu) do not.

Failures, and what happens:
- near its time limit, or preempted with notice (SLURM sends submitit's USR2, sbatch --signal): submitit
  checkpoints the task (`NodeTask.checkpoint`) and requeues it with the same arguments; time-outs count
  against `max_num_timeout`, preemptions do not.
- killed without a result (scancel, OOM, node loss): the level's unfinished nodes are submitted again, up to
  `data_gen.max_resubmits` times (default 2).
- SIGTERM (preemption without notice, scancel): Lightning stops training with SIGTERMException, a SystemExit
  that submitit does not record as an error: the task ends without a result and counts as killed (above).
- a Python error inside a task: raised at once with the task's traceback (rerunning would fail the same way).
Either way a rerun task skips a node whose record and weights are complete (`data_gen.graph.is_done`), and the
driver itself can be rerun at any time: finished nodes are never retrained. `graph.json` is assembled by
`data_gen.graph.write_graph` from the node records, so it is the same as a local `build_graph` of the same config
and threads. A node rebuilt after a requeue or resubmission restarts its fine-tune from its parent's weights.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import submitit
from omegaconf import DictConfig, OmegaConf

from common.runinfo import versions
from data_gen.graph import (build_node, check_jobs, graph_config, is_done, read_record, remove_partial_writes,
                            survey, trainer_options, write_graph)
from data_gen.spec import build_spec

log = logging.getLogger("mother.data_gen")

_KINDS = {"SlurmLauncher": "slurm", "LocalLauncher": "local"}
# Keys of hydra-submitit-launcher's config that submitit takes without the "<cluster>_" prefix.
_BASE_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
              "stderr_to_stdout"}


def launcher_config(cfg: DictConfig | None = None) -> dict:
    """The resolved `hydra.launcher` config of the current Hydra run (or `cfg.hydra.launcher` when composed
    with return_hydra_config); raises when it is not a submitit launcher."""
    node = None
    if cfg is not None and "hydra" in cfg:
        node = cfg.hydra.launcher
    else:
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.initialized():
            node = HydraConfig.get().launcher
    if node is None:
        raise RuntimeError("no Hydra launcher config: run through `python run.py ... hydra/launcher=slurm` "
                           "(or pass launcher=...)")
    target = str(node.get("_target_", ""))
    if target.rsplit(".", 1)[-1] not in _KINDS:
        raise ValueError(f"a SLURM graph build needs a submitit launcher (hydra/launcher=slurm or local), "
                         f"got {target or 'none'}")
    out = {k: node[k] for k in node if k not in ("submitit_folder", "name")}  # both interpolate hydra.* keys
    return OmegaConf.to_container(OmegaConf.create(out), resolve=True)


def make_executor(launcher: Mapping[str, Any], folder: str | Path, name: str) -> submitit.Executor:
    """A submitit executor configured like hydra-submitit-launcher configures its own from `launcher`."""
    params = dict(launcher)
    kind = _KINDS.get(str(params.pop("_target_", "")).rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(f"launcher _target_ {launcher.get('_target_')!r} is not a submitit launcher")
    params.pop("submitit_folder", None)
    init = {"folder": str(folder)}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    params["name"] = name
    executor.update_parameters(**{k if k in _BASE_KEYS else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def gpu_launcher(launcher: Mapping[str, Any], dg: Mapping[str, Any]) -> dict:
    """The launcher config of a graph build's arrays: one GPU per task unless the build trains on the CPU.

    `gpus_per_node` null: 1 when `data_gen.accelerator` is auto or gpu (left null, no GPU asked for, for cpu / mps).
    A number is kept (0 on a CPU-only cluster makes `auto` train on the CPU); more than 1 leaves GPUs idle (one node
    per task, on one device).

    Raises:
        ValueError: accelerator gpu with gpus_per_node 0 (every task would fail to find its GPU).
    """
    out = dict(launcher)
    accelerator = str(trainer_options(dg)["accelerator"]).lower()
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if out.get("gpus_per_node") is None and wants_gpu:
        out["gpus_per_node"] = 1
    gpus = int(out.get("gpus_per_node") or 0)
    if gpus == 0 and accelerator in ("gpu", "cuda"):
        raise ValueError("data_gen.accelerator=gpu but hydra.launcher.gpus_per_node=0: the array tasks would get no "
                         "GPU; set hydra.launcher.gpus_per_node=1 (or leave it null)")
    if gpus > 1:
        log.warning("hydra.launcher.gpus_per_node=%d: each array task trains one node on one GPU, %d stay idle",
                    gpus, gpus - 1)
    return out


class NodeTask(submitit.helpers.Checkpointable):
    """One graph node as a submitit task. Requeued with the same arguments when preempted or timed out; a
    rerun skips a node already finished and otherwise rebuilds it: the fine-tune restarts from its parent's weights
    with the same seed (data_gen.finetune saves step checkpoints but does not resume from them)."""

    def __init__(self, graph_dir: str | Path, node_kwargs: Mapping[str, Any], force: bool = False) -> None:
        self.graph_dir = Path(graph_dir)
        self.node_kwargs = dict(node_kwargs)
        self.force = force

    def __call__(self, job: Mapping) -> dict:
        if not self.force and done(self.graph_dir, job):
            log.info("node %s already built; skipping", job["id"])
            return {"id": job["id"], "built": False}
        build_node(self.graph_dir, job, **self.node_kwargs)
        return {"id": job["id"], "built": True}


def done(graph_dir: Path, job: Mapping) -> bool:
    """`is_done` with the parent's recorded sha256 looked up."""
    parent = read_record(graph_dir, job["parent"]) if job["parent"] else None
    return is_done(graph_dir, job, parent["meta"]["sha256"] if parent else None)


def _run_level(executor: submitit.Executor, task: NodeTask, todo: list[dict], level: int) -> list[str]:
    """Submit `todo` as one array, wait; return the ids of the nodes killed without a result (a task that
    raised a Python error raises here, with its traceback)."""
    from tqdm.auto import tqdm

    jobs = executor.map_array(task, todo)
    log.info("level %d: %d node(s) submitted as array %s", level, len(todo), jobs[0].job_id.split("_")[0])
    by_job = {j.job_id: node for j, node in zip(jobs, todo)}
    killed = []
    for j in tqdm(submitit.helpers.as_completed(jobs, poll_frequency=1), total=len(jobs), desc=f"level {level}", unit="node"):
        try:
            j.result()
        except submitit.core.utils.FailedJobError:  # a Python error in the task: rerunning would not help
            raise
        except submitit.core.utils.UncompletedJobError as e:
            log.warning("node %s (job %s) ended without a result: %s", by_job[j.job_id]["id"], j.job_id,
                        str(e).splitlines()[0])
            killed.append(by_job[j.job_id]["id"])
    return killed


def build_graph_slurm(cfg: DictConfig, *, launcher: Mapping[str, Any] | None = None,
                      folder: str | Path | None = None, finetune_fn: Callable | None = None,
                      load_root_fn: Callable | None = None, load_task_fn: Callable | None = None) -> dict:
    """Build (or finish) the graph `cfg.data_gen` describes, one submitit job array per level.

    Args:
        cfg: the composed config (data_gen, paths, logger, seed).
        launcher: the hydra-submitit-launcher config (default: `launcher_config(cfg)`); `gpu_launcher` fills in
            its GPUs per task.
        folder: submitit's log/pickle folder (default: `<paths.output_dir>/submitit`).
        finetune_fn / load_root_fn / load_task_fn: passed to `build_node` (tests inject faults; must pickle).
    Returns the same summary as `data_gen.graph.build_graph`, plus `resubmitted` (node ids sent again).
    """
    dg = graph_config(cfg)
    seed = int(dg.get("seed", cfg.seed))
    graph_dir = Path(dg["dir"])
    launcher = gpu_launcher(launcher if launcher is not None else launcher_config(cfg), dg)
    # Equal weights need an equal thread count: data_gen.num_threads, else one per CPU the job asks for.
    threads = int(dg.get("num_threads") or launcher.get("cpus_per_task") or 1)
    folder = Path(folder) if folder is not None else Path(cfg.paths.output_dir) / "submitit"
    max_resubmits = int(dg.get("max_resubmits", 2))
    jobs = build_spec(dg, seed)
    check_jobs(jobs, tasks=load_task_fn is None, roots=load_root_fn is None)   # before anything is submitted
    survey(graph_dir, jobs, threads, bool(dg.get("force")))
    remove_partial_writes(graph_dir)
    extra = {"name": dg["name"], "seed": seed, "num_threads": threads, "config": dg, "versions": versions()}
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None
    node_kwargs = dict(cache_dir=dg.get("cache_dir"), data_dir=dg.get("data_dir"),
                       num_threads=threads, logger_cfg=logger_cfg,
                       checkpoint_every=dg.get("checkpoint_every"), progress=False, trainer=trainer_options(dg),
                       finetune_fn=finetune_fn, load_root_fn=load_root_fn, load_task_fn=load_task_fn)
    start = time.perf_counter()
    built, skipped, resubmitted = [], [], []
    for level in sorted({j["level"] for j in jobs}):
        level_jobs = [j for j in jobs if j["level"] == level]
        todo = level_jobs if dg.get("force") else [j for j in level_jobs if not done(graph_dir, j)]
        skipped += [j["id"] for j in level_jobs if j not in todo]
        built += [j["id"] for j in todo]
        executor = make_executor(launcher, folder, name=f"{dg['name']}_L{level}")
        for attempt in range(max_resubmits + 1):
            if not todo:
                break
            if attempt:
                log.warning("level %d: resubmitting %d node(s): %s", level, len(todo), [j["id"] for j in todo])
                resubmitted += [j["id"] for j in todo]
            # data_gen.force rebuilds finished nodes, but only in the first round: not those it just built
            task = NodeTask(graph_dir, node_kwargs, force=bool(dg.get("force")) and attempt == 0)
            _run_level(executor, task, todo, level)
            todo = [j for j in todo if not done(graph_dir, j)]
        if todo:
            write_graph(graph_dir, jobs, extra)
            raise RuntimeError(f"level {level}: node(s) {[j['id'] for j in todo]} still unfinished after "
                               f"{max_resubmits} resubmission(s); submitit logs in {folder}")
        write_graph(graph_dir, jobs, extra)
    graph = write_graph(graph_dir, jobs, extra)
    accs = [m["val_accuracy"] for m in graph["meta"].values() if m.get("val_accuracy") is not None]
    return {"graph_dir": str(graph_dir), "graph_json": str(graph_dir / "graph.json"), "nodes": len(jobs),
            "built": built, "skipped": skipped, "resubmitted": resubmitted,
            "seconds": time.perf_counter() - start,
            "mean_val_accuracy": sum(accs) / len(accs) if accs else None, "complete": graph["complete"],
            "num_threads": threads, "gpus_per_task": int(launcher.get("gpus_per_node") or 0)}
