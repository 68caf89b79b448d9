"""Fine-tuning throughput: our Lightning path (`data_gen.finetune.finetune`) vs a plain PyTorch loop.

Both train the same model from the same init on the same synthetic batches (random uint8 images, batch 64 by
default), with the same optimizer, in this one process, alternating rounds so machine load hits both alike.
Prints steps/s of each and the ratio (target: Lightning >= 0.85 x plain): the median over rounds of the
ratio within a round (robust to load that changes between rounds on a shared machine).

    python scripts/bench_finetune.py                       # vit_mini, full, 2 threads
    python scripts/bench_finetune.py --method lora --arch resnet_mini --steps 40 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.seed import derive_seed, seed_everything  # noqa: E402
from data_gen.finetune import _loader, add_lora, finetune, resolve_recipe  # noqa: E402
from data_gen.models import Preprocess, classifier_name, create_model, load_init_state  # noqa: E402


def synthetic_task(n: int, num_classes: int, size: int) -> SimpleNamespace:
    """Random uint8 images and labels (synthetic: throughput only)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return SimpleNamespace(name="bench/random", num_classes=num_classes, x_train=x, y_train=y,
                           x_val=x[:64], y_val=y[:64])


def plain_loop(arch: str, init: dict, task, recipe: dict) -> tuple[float, int]:
    """The same training as `finetune`, written as a bare loop; returns (train seconds, steps)."""
    r = resolve_recipe(recipe)
    seed_everything(r["seed"])
    model = create_model(arch, task.num_classes)
    head = classifier_name(model)
    load_init_state(model, init, skip_prefix=head)
    pre = Preprocess.for_model(model)
    if r["method"] == "lora":
        model = add_lora(model, r, head)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=r["lr"],
                            weight_decay=r["weight_decay"])
    loader = _loader(task.x_train, task.y_train, r["batch_size"], derive_seed(r["seed"], "shuffle"))
    steps, start = 0, None
    for _ in range(r["epochs"]):
        for x, y in loader:
            start = start or time.perf_counter()
            loss = F.cross_entropy(model(pre(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if r["max_steps"] and steps >= r["max_steps"]:
                return time.perf_counter() - start, steps
    return time.perf_counter() - start, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_mini")
    p.add_argument("--method", default="full", choices=["full", "lora"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true", help="turn Lightning's progress bar off")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = synthetic_task(args.steps * args.batch_size, 10, 32)
    torch.manual_seed(0)
    init = create_model(args.arch, 10).state_dict()
    recipe = {"method": args.method, "lr": 1e-3, "batch_size": args.batch_size, "epochs": 1, "seed": 0,
              "optimizer": "adamw", "max_steps": args.steps}
    if args.method == "lora":
        recipe |= {"lora_rank": 8, "lora_alpha": 8,
                   "lora_targets": ["qkv", "proj", "fc1", "fc2"] if "vit" in args.arch else ["conv1", "conv2"]}
    plain, light, light_wall = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            secs, steps = plain_loop(args.arch, init, task, recipe)
            plain.append(steps / secs)
            res = finetune(arch=args.arch, init_state=init, task=task, recipe=recipe, out_dir=Path(tmp),
                           node_id=f"r{i}", num_threads=args.threads, progress=not args.no_progress)
            light.append(res["steps"] / res["train_seconds"])
            light_wall.append(res["seconds"])
            print(f"round {i}: plain {plain[-1]:.2f} steps/s, lightning {light[-1]:.2f} steps/s "
                  f"(finetune wall {res['seconds']:.1f}s for {res['steps']} steps incl. setup, val, save)")
    p_med, l_med = statistics.median(plain), statistics.median(light)
    paired = sorted(b / a for a, b in zip(plain, light))
    print(f"\n{args.arch} {args.method} batch {args.batch_size} threads {args.threads} steps {args.steps} "
          f"x{args.rounds}: plain {p_med:.2f} steps/s, lightning {l_med:.2f} steps/s, "
          f"ratio lightning/plain = {statistics.median(paired):.3f} (median of per-round ratios; target >= 0.85); "
          f"per-round ratios "
          f"{' '.join(f'{r:.2f}' for r in paired)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
