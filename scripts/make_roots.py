"""Build the project's built-in roots (pretraining with checkpoints) into the roots cache, optionally ship them.

    python scripts/make_roots.py                      # all roots into $MOTHER_GRAPHS_DIR or <repo>/graphs, /roots
    python scripts/make_roots.py --names vit_a1 --threads 1 --ship

A finished root is skipped (verified by hash) unless --force. Prints, per root, the validation accuracy on its
pretraining mix and the mean excess kurtosis of its weight matrices along pretraining (the paper's Fig. 2 left
expects it to rise in this generalization stage).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (after the path fix)
from safetensors.torch import load_file  # noqa: E402

from common.io import read_json  # noqa: E402
from common.paths import project_root  # noqa: E402
from data_gen import roots  # noqa: E402
from data_gen.pretraining import mean_kurtosis  # noqa: E402


def main() -> None:
    default_cache = Path(os.environ.get("MOTHER_GRAPHS_DIR", project_root() / "graphs")) / "roots"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="*", default=sorted(roots.ROOTS), help="roots to build (default: all)")
    p.add_argument("--cache-dir", type=Path, default=default_cache)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MOTHER_DATA_DIR",
                                                                         project_root() / "data")))
    p.add_argument("--threads", type=int, default=1, help="torch threads (bit-identity holds per count; the shipped roots used 1)")
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    p.add_argument("--ship", action="store_true", help="copy final weights into data_gen/assets/roots/")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in args.names:
        t0 = time.perf_counter()
        folder = roots.build_root(name, cache_dir=args.cache_dir, data_dir=args.data_dir,
                                  num_threads=args.threads, force=args.force)
        rec = read_json(folder / "root.json")
        curve = [(s, mean_kurtosis(load_file(str(path)).items(), ("head", "fc"))) for s, path in roots.root_checkpoints(name, cache_dir=args.cache_dir)]
        kurt = " ".join(f"{s}:{k:.3f}" for s, k in curve)
        print(f"{name}: {rec['arch']} recipe {rec['recipe']['optimizer']}/{rec['data']} steps {rec['steps']} "
              f"val_acc {rec['val_accuracy']:.3f} val_loss {rec['val_loss']:.3f} "
              f"train-loss drop over the last 20% {100 * rec['plateau_drop']:.1f}% train {rec['train_seconds']:.1f}s "
              f"(wall {time.perf_counter() - t0:.1f}s, {rec['num_threads']} threads)\n  kurtosis {kurt}", flush=True)
        if args.ship:
            print(f"  shipped {roots.ship_root(name, cache_dir=args.cache_dir)}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # replaced per root by --threads inside finetune
    main()
