"""Benchmark built-in task generation: seconds per task and the ratio to a same-process baseline.

    python scripts/bench_tasks.py [--n 3000] [--size 32] [--repeat 3]

Baseline: drawing one uniform float32 per output value (N x 3 x H x W) with numpy, the least any per-pixel
generator must do. Also compares rendering in chunks of builtin.CHUNK images against one big chunk.
Cores are shared here, so read the ratios, not the seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_gen.tasks import builtin  # noqa: E402


def best_of(fn, repeat: int) -> float:
    """Fastest of `repeat` timed calls (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    base = best_of(lambda: rng.random((args.n, 3, args.size, args.size), dtype=np.float32), args.repeat)
    builtin.generate("digits", "train", 10, args.size, 0)  # load the digits CSV once
    print(f"baseline (uniform float32 per value, n={args.n}, size={args.size}): {base:.4f} s")
    print(f"{'task':12s} {'seconds':>8s} {'x baseline':>10s} {'unchunked/chunked':>18s}")
    total = 0.0
    for name in builtin.GENERATORS:
        sec = best_of(lambda: builtin.generate(name, "train", args.n, args.size, 0), args.repeat)
        chunk, builtin.CHUNK = builtin.CHUNK, args.n
        try:
            whole = best_of(lambda: builtin.generate(name, "train", args.n, args.size, 0), 1)
        finally:
            builtin.CHUNK = chunk
        total += sec
        print(f"{name:12s} {sec:8.3f} {sec / base:10.1f} {whole / sec:18.2f}")
    print(f"all {len(builtin.GENERATORS)} tasks: {total:.2f} s ({total / base:.1f} x baseline)")


if __name__ == "__main__":
    main()
