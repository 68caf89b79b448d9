"""GPU plumbing on CPU: Trainer options (accelerator, devices, precision) reach Lightning and the node records,
local workers are pinned to distinct GPUs (from a faked GPU count), SLURM array tasks ask for one GPU each.

Tiny synthetic runs only: built-in roots and tasks, a few steps. No GPU is needed (or used)."""
from __future__ import annotations

import os
import time
from concurrent.futures import wait
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors import safe_open

from common.io import read_json
from data_gen.finetune import resolve_trainer
from data_gen.graph import build_gpus, build_graph, trainer_options
from data_gen.slurm import gpu_launcher
from data_gen.workers import gpu_slots, node_pool, resolve_workers
from tests.conftest import ROOT, compose

# one built-in root with one fine-tuned child, 2 steps
ONE_CHILD = ["data_gen=default", "data_gen.name=plumb", "data_gen.depth=1", "data_gen.children=1",
             "data_gen.progress=false", "data_gen.roots=[{id: vit_a1, source: 'builtin:vit_a1', task: pretrain/mix_a}]",
             *(f"++data_gen.methods.{m}.{k}={v}" for m in ("full", "lora")
               for k, v in (("max_steps", 2), ("epochs", 1), ("batch_size", 16), ("n_train", 32), ("n_val", 16)))]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Make torch report `n` CUDA GPUs (nothing may actually start CUDA)."""
    def fake(n: int, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return fake


def test_trainer_defaults_resolve_to_the_old_cpu_trainer(fake_gpus):
    """On CPU, auto gives the Trainer of earlier versions (cpu, 1 device, 32-true); bad values fail clearly."""
    fake_gpus(0)
    assert resolve_trainer() == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    assert resolve_trainer("cpu", "auto", "bf16")["precision"] == "bf16-mixed"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_trainer("gpu")
    with pytest.raises(ValueError, match="one device"):
        resolve_trainer("cpu", devices=2)
    with pytest.raises(ValueError, match="precision"):
        resolve_trainer("cpu", precision="8-bit")
    with pytest.raises(ValueError, match="accelerator"):
        resolve_trainer("tpu")


def test_gpu_precision_auto_is_bf16_mixed_where_supported(fake_gpus):
    """auto on a (faked) GPU: bf16-mixed, or 16-mixed on a GPU without bf16; an explicit value is kept."""
    fake_gpus(2)
    assert resolve_trainer("auto") == {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    assert resolve_trainer("cuda", precision="32")["precision"] == "32-true"
    fake_gpus(1, bf16=False)
    assert resolve_trainer("gpu")["precision"] == "16-mixed"


def test_paper_configs_default_to_auto_and_mini_configs_to_cpu():
    """The paper graph configs use a GPU when present; the built-in graphs stay on the CPU (bit-identical)."""
    for name, accelerator in (("lora_v", "auto"), ("ft", "auto"), ("resnet", "auto"), ("deep", "auto"),
                              ("default", "cpu"), ("ft_mini", "cpu"), ("lora_v_mini", "cpu"), ("deep_mini", "cpu")):
        dg = compose([f"data_gen={name}"]).data_gen
        assert trainer_options(dg) == {"accelerator": accelerator, "devices": 1, "precision": "auto"}, name


def test_trainer_options_reach_lightning_and_the_record(tmp_path, monkeypatch):
    """data_gen.precision=bf16-mixed (Lightning runs it on CPU too) reaches pl.Trainer and each node's meta,
    resolved; the saved weights are float32 all the same."""
    seen: list[dict] = []

    class SpyTrainer(pl.Trainer):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(pl, "Trainer", SpyTrainer)
    cfg = compose([f"paths.graphs_dir={tmp_path / 'graphs'}", f"paths.data_dir={tmp_path / 'data'}", *ONE_CHILD,
                   "data_gen.precision=bf16-mixed", "data_gen.workers=1"], output_dir=tmp_path / "out")
    graph = read_json(build_graph(cfg)["graph_json"])
    assert len(seen) == 1
    assert {k: seen[0][k] for k in ("accelerator", "devices", "precision", "deterministic")} == \
        {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed", "deterministic": True}
    child, root = graph["meta"]["vit_a1-0"], graph["meta"]["vit_a1"]
    assert (child["accelerator"], child["devices"], child["precision"]) == ("cpu", 1, "bf16-mixed")
    assert child["gpu_memory_peak_mb"] is None and child["train_seconds"] > child["step_seconds"] > 0
    assert root["precision"] is None and root["accelerator"] is None
    with safe_open(str(tmp_path / "graphs" / "plumb" / child["weights"]), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}


def test_workers_one_per_gpu_with_a_faked_gpu_count(fake_gpus, monkeypatch):
    """auto workers = number of GPUs when the build trains on GPUs; each worker gets its own GPU, dealt round robin
    when there are more workers than GPUs; CUDA_VISIBLE_DEVICES of the parent is respected; cpu ignores GPUs."""
    fake_gpus(4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = build_gpus({"accelerator": "auto"})
    assert gpus == ["0", "1", "2", "3"]
    assert resolve_workers("auto", 1, gpus) == 4 and resolve_workers(2, 1, gpus) == 2
    assert gpu_slots(4, gpus) == ["0", "1", "2", "3"]
    assert gpu_slots(2, gpus) == ["0", "1"]
    assert gpu_slots(6, gpus) == ["0", "1", "2", "3", "0", "1"]
    assert build_gpus({"accelerator": "cpu"}) == [] and gpu_slots(2, []) == [None, None]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_workers("auto", 1, []) == cores
    fake_gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert build_gpus({"accelerator": "gpu"}) == ["5", "7"]
    fake_gpus(0)
    assert build_gpus({"accelerator": "auto"}) == []
    with pytest.raises(ValueError, match="no CUDA GPU"):
        build_gpus({"accelerator": "gpu"})


def report_gpu(folder: str, expected: int) -> tuple[int, str | None]:
    """Pool task: record this worker, wait until `expected` workers have, return (pid, CUDA_VISIBLE_DEVICES)."""
    Path(folder, str(os.getpid())).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    end = time.time() + 120
    while len(list(Path(folder).iterdir())) < expected and time.time() < end:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow
def test_pool_workers_each_take_their_own_gpu(tmp_path, monkeypatch):
    """Real spawned build workers: each holds a different CUDA_VISIBLE_DEVICES (set before CUDA could start in
    it); the parent's environment is untouched. Each task waits for the other worker, so both must run one."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pool = node_pool(2, 1, ["3", "5"])
    try:
        futures = [pool.submit(report_gpu, str(tmp_path), 2) for _ in range(2)]
        wait(futures, timeout=300)
        results = [f.result() for f in futures]
    finally:
        pool.shutdown()
    assert len({pid for pid, _ in results}) == 2
    assert sorted(gpu for _, gpu in results) == ["3", "5"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_slurm_array_tasks_ask_for_one_gpu_each(tmp_path, monkeypatch):
    """The slurm launcher's null gpus_per_node becomes 1 for a paper graph (accelerator auto) and stays unset for a
    built-in one (cpu); an explicit count is kept; gpu with 0 GPUs is an error. The driver hands that launcher to
    submitit (captured here before anything is submitted)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from data_gen import slurm
    from data_gen.slurm import build_graph_slurm, launcher_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        launcher = launcher_config(hydra_compose("config", overrides=["hydra/launcher=slurm"],
                                                 return_hydra_config=True))
    assert launcher["gpus_per_node"] is None
    assert gpu_launcher(launcher, {"accelerator": "auto"})["gpus_per_node"] == 1
    assert gpu_launcher(launcher, {"accelerator": "gpu"})["gpus_per_node"] == 1
    assert gpu_launcher(launcher, {"accelerator": "cpu"})["gpus_per_node"] is None
    assert gpu_launcher({**launcher, "gpus_per_node": 0}, {"accelerator": "auto"})["gpus_per_node"] == 0
    with pytest.raises(ValueError, match="gpus_per_node=0"):
        gpu_launcher({**launcher, "gpus_per_node": 0}, {"accelerator": "gpu"})

    captured = {}

    class Submitted(Exception):
        pass

    def capture(params, folder, name):
        captured.update(params)
        raise Submitted

    monkeypatch.setattr(slurm, "make_executor", capture)
    cfg = compose(["data_gen=ft", f"paths.graphs_dir={tmp_path}"], output_dir=tmp_path / "out")
    with pytest.raises(Submitted):
        build_graph_slurm(cfg, launcher=launcher)
    assert captured["gpus_per_node"] == 1 and captured["_target_"].endswith("SlurmLauncher")
