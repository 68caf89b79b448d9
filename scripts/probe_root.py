"""Pretrain one probe root (any width, length, data size) with the resumable loop, to measure convergence.

    python scripts/probe_root.py --name w64_s10k --width 64 --steps 10000 --n-train 48000 --mix mix_a

Writes <graphs>/probes/<name>/ (final weights, checkpoints, curve.json, probe.json). Rerun the same command to
resume after a stop. Used to choose the built-in roots' recipe by training evidence (issue: faithful miniature).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io import write_json  # noqa: E402
from common.paths import project_root  # noqa: E402
from common.seed import derive_seed  # noqa: E402
from data_gen.pretraining import pretrain  # noqa: E402
from data_gen.tasks import load_task  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--n-train", type=int, default=48000)
    p.add_argument("--n-val", type=int, default=2400)
    p.add_argument("--mix", default="mix_a")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    graphs = Path(os.environ.get("MOTHER_GRAPHS_DIR", project_root() / "graphs"))
    data_dir = Path(os.environ.get("MOTHER_DATA_DIR", project_root() / "data"))
    task = load_task(f"pretrain/{args.mix}", seed=0, data_dir=data_dir, n_train=args.n_train, n_val=args.n_val)
    recipe = {"optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay, "scheduler": "cosine",
              "warmup_steps": args.warmup, "augment": ["flip", "crop"], "batch_size": args.batch_size,
              "max_steps": args.steps, "seed": derive_seed("probe_root", args.name, args.seed)}
    arch_kwargs = {"embed_dim": args.width, "depth": args.depth, "num_heads": args.heads}
    folder = graphs / "probes" / args.name
    res = pretrain(arch="vit_mini", task=task, recipe=recipe, folder=folder, checkpoint_every=args.eval_every * 2,
                   eval_every=args.eval_every, num_threads=args.threads, arch_kwargs=arch_kwargs)
    write_json(folder / "probe.json", {"args": vars(args), "recipe": recipe, "arch_kwargs": arch_kwargs,
                                       **{k: v for k, v in res.items() if k != "curve"}})
    print(f"{args.name}: val_acc {res['val_accuracy']:.4f} val_loss {res['val_loss']:.4f} "
          f"train_loss {res['final_loss']:.4f} in {res['train_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
