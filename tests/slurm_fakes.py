"""Synthetic stand-ins for root loading, task loading and fine-tuning, for the SLURM tests (tests/test_slurm.py).

They run inside SLURM jobs, so they live in an importable module and take their timing from the environment
(MOTHER_FAKE_STEP_S, seconds per training step). `fake_finetune` resumes from its latest step checkpoint, like a
real long job must, logs the step it started from to `<out_dir>/starts/<node_id>.txt` and its process id to `<out_dir>/pids/`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from common.io import atomic_write, sha256_file


def fake_load_root(source, **_) -> tuple[str, dict[str, torch.Tensor]]:
    """A deterministic 4x4 'model' per root source."""
    source = source["source"] if isinstance(source, dict) else str(source)
    gen = torch.Generator().manual_seed(sum(source.encode()))
    return "fake", {"w": torch.randn(4, 4, generator=gen)}


def fake_load_task(name: str, **_) -> SimpleNamespace:
    return SimpleNamespace(name=name, num_classes=3)


def _save(state: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: save_file(state, tmp))


def fake_finetune(*, arch, init_state, task, recipe, out_dir, node_id, checkpoint_every=None, **_) -> dict:
    """`max_steps` deterministic 'training' steps (seeded by recipe seed and step), checkpointed every step."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints" / node_id
    done = sorted((int(p.stem.split("_")[1]), p) for p in ckpt_dir.glob("step_*.safetensors"))
    first, state = (done[-1][0], load_file(done[-1][1])) if done else (0, dict(init_state))
    (out_dir / "starts").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "starts" / f"{node_id}.txt", "a") as f:
        f.write(f"{first}\n")
    (out_dir / "pids").mkdir(parents=True, exist_ok=True)
    (out_dir / "pids" / f"{node_id}.txt").write_text(str(os.getpid()))
    delay = float(os.environ.get("MOTHER_FAKE_STEP_S", "0"))
    steps = int(recipe["max_steps"])
    for step in range(first + 1, steps + 1):
        gen = torch.Generator().manual_seed(int(recipe["seed"]) * 1000 + step)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        time.sleep(delay)
        _save(state, ckpt_dir / f"step_{step}.safetensors")
    path = out_dir / "models" / f"{node_id}.safetensors"
    _save(state, path)
    return {"val_accuracy": float(torch.sigmoid(state["w"].mean())), "weights": str(path),
            "sha256": sha256_file(path), "steps": steps, "seconds": time.perf_counter() - start, "adapter": None}
