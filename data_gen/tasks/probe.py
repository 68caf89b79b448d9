"""Difficulty probe: train a small model from scratch on each task for a few hundred steps, print val accuracy.

    python -m data_gen.tasks.probe                       # all built-in tasks, vit_mini, 300 steps
    python -m data_gen.tasks.probe --tasks builtin/count --model linear --steps 500

A built-in task should end clearly above chance but below 100% here (a pretrained root does better).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from data_gen.tasks import TaskData, list_tasks, load_task


def make_model(kind: str, task: TaskData) -> torch.nn.Module:
    """"linear" (pixels -> classes), "mlp" (one hidden layer of 256) or any `data_gen.models` arch."""
    d = task.x_train[0].numel()
    if kind == "linear":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, task.num_classes))
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 256), torch.nn.GELU(),
                                   torch.nn.Linear(256, task.num_classes))
    from data_gen.models import create_model
    return create_model(kind, task.num_classes)


def probe(task: TaskData, kind: str, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> float:
    """Train `kind` on task.x_train with AdamW for `steps` steps; return accuracy on task.x_val."""
    torch.manual_seed(seed)
    model = make_model(kind, task)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    norm = lambda x: (x.float() / 127.5) - 1.0  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(task.y_train), (batch_size,), generator=g)
        loss = F.cross_entropy(model(norm(task.x_train[idx])), task.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(norm(x)).argmax(1) for x in task.x_val.split(256)])
    return (pred == task.y_val).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=list_tasks("builtin"))
    p.add_argument("--model", default="vit_mini")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.tasks:
        t0 = time.perf_counter()
        task = load_task(name, seed=args.seed)
        acc = probe(task, args.model, args.steps, seed=args.seed)
        print(json.dumps({"task": name, "model": args.model, "steps": args.steps, "val_accuracy": round(acc, 4),
                          "chance": round(1 / task.num_classes, 4), "seconds": round(time.perf_counter() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
