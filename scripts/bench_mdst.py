"""Benchmark: our dense Chu-Liu/Edmonds (recovery.mdst) against networkx, in one process.

    .venv/bin/python scripts/bench_mdst.py [--sizes 100 1000 10000] [--nx-max 100] [--repeats 3]

Costs are MoTHer-like: l2 distances between random points plus a lambda direction penalty (free root).
networkx runs only up to --nx-max nodes (n^2 Python edge objects: 22-37 s at n = 100 on the shared 2-core
machine, n = 1000 did not finish); both totals are compared.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from recovery.mdst import arborescence_cost, is_arborescence, min_arborescence
from recovery.mother import cost_matrix


def mother_costs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Distances of n random points in 32-D with random direction scores, combined as in the paper."""
    x = rng.standard_normal((n, 32))
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0))
    np.fill_diagonal(d, 0)
    return cost_matrix(d, rng.standard_normal(n), np.zeros(n, dtype=bool))[0]


def networkx_mdst(cost: np.ndarray) -> tuple[float, float]:
    """(seconds, total cost) of networkx.minimum_spanning_arborescence, graph building included."""
    import networkx as nx

    t = time.perf_counter()
    n = len(cost)
    g = nx.DiGraph()
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    g.add_weighted_edges_from(zip(i.tolist(), j.tolist(), cost[i, j].tolist()))
    tree = nx.minimum_spanning_arborescence(g)
    return time.perf_counter() - t, sum(w for _, _, w in tree.edges(data="weight"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--nx-max", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'n':>7} {'ours (s)':>10} {'networkx (s)':>13} {'speed-up':>9}  same total")
    for n in args.sizes:
        cost = mother_costs(n, rng)
        times = []
        for _ in range(args.repeats if n <= 1000 else 1):
            t = time.perf_counter()
            parent = min_arborescence(cost)
            times.append(time.perf_counter() - t)
        ours = min(times)
        assert is_arborescence(parent)
        if n <= args.nx_max:
            t_nx, total_nx = networkx_mdst(cost)
            same = bool(np.isclose(arborescence_cost(cost, parent), total_nx, rtol=1e-9))
            print(f"{n:>7} {ours:>10.4f} {t_nx:>13.3f} {t_nx / ours:>8.0f}x  {same}", flush=True)
        else:
            print(f"{n:>7} {ours:>10.4f} {'skipped':>13} {'-':>9}  -", flush=True)


if __name__ == "__main__":
    main()
