"""Benchmark of the sparse recovery (recovery/sparse.py, issue 15 goal 4).

    .venv/bin/python scripts/bench_sparse.py [--large-files 100000] [--large 100000] [--compare 2000 10000]
        [--files 10000] [--knn 96]

Prints, each part in a fresh process (its own peak RSS):
- `large_files N`: N models written as files by a child process (its time printed, not counted), then
  `recover(folder, candidates=knn)` end to end: discovery, reading, recovery, scoring.
- `compare N`: dense method (pairwise l2, scipy single linkage, dense MDST) vs sparse on the same in-memory forest:
  edge accuracy of both, whether parents and clusters are equal, recall among the candidates of the true edges and
  of the dense method's edges, merge heights, times.
- `large N`: the sparse recovery alone on an in-memory forest of N models (one 64x64 layer each): time, peak RSS,
  accuracy, recall of the true edges. In memory, not files: see `files` for the folder path and its write time.
- `files N`: the forest written as N safetensors files + graph.json, then `recover(..., candidates=knn)` (the real
  folder reading) vs `recover(..., candidates=dense)`: accuracies, equality, times.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kurtosis_rows(x: np.ndarray) -> np.ndarray:
    """Pearson kurtosis of each row, float64 (recovery.direction's statistic, one layer per model)."""
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], 4096):
        c = x[s:s + 4096].astype(np.float64)
        c -= c.mean(axis=1, keepdims=True)
        c2 = c * c
        out[s:s + 4096] = (c2 * c2).mean(axis=1) / c2.mean(axis=1) ** 2
    return out


def _pairs(parent: np.ndarray) -> set[tuple[int, int]]:
    return {(min(int(p), c), max(int(p), c)) for c, p in enumerate(parent) if p >= 0}


def _recall(parent: np.ndarray, res) -> float:
    """Share of the edges of `parent` among the nearest-neighbour candidates (before the certificate's additions)."""
    want = _pairs(parent)
    have = set(zip(res.i.tolist(), res.j.tolist())) - set(zip(res.added[0].tolist(), res.added[1].tolist()))
    return len(want & have) / max(len(want), 1)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare(n: int, knn: int, seed: int = 0) -> dict:
    """Dense vs sparse on one in-memory forest of n models."""
    from recovery.cluster import cluster_trees
    from recovery.distances import pairwise_sq_dists
    from recovery.mother import recover_forest
    from recovery.sparse import recover_matrix
    from recovery.synthetic_large import edge_accuracy, large_forest

    f = large_forest(n, seed=seed)
    k = kurtosis_rows(f.x)
    t = time.perf_counter()
    res = recover_matrix(f.x, k, sparse={"knn": knn})
    t_sparse = time.perf_counter() - t
    t = time.perf_counter()
    d = np.sqrt(pairwise_sq_dists(f.x))
    cl = cluster_trees(d)
    parent, _ = recover_forest(d, k, np.zeros(n, dtype=bool), cl.labels)
    t_dense = time.perf_counter() - t
    hd, hs = np.sort(cl.evidence["heights"]), np.sort(res.clustering.evidence["heights"])
    within = len(hd) - (res.n_groups - 1)
    return {"part": "compare", "n": n, "trees": int(f.tree.max()) + 1, "max_depth": int(f.depth.max()),
            "dense_accuracy": edge_accuracy(f.parent, parent), "sparse_accuracy": edge_accuracy(f.parent, res.parent),
            "parents_equal": bool((parent == res.parent).all()),
            "clusters_equal": bool((cl.labels == res.clustering.labels).all()),
            "n_clusters": [cl.n_clusters, res.clustering.n_clusters],
            "recall_true_edges": _recall(f.parent, res), "recall_dense_edges": _recall(parent, res),
            "heights_within_groups_max_rel_diff": float(np.max(np.abs(hd[:within] - hs[:within]) / hd[:within])),
            "heights_between_groups_max_rel_diff": float(np.max(np.abs(hd[within:] - hs[within:]) / hd[within:]))
            if within < len(hd) else 0.0,
            "candidate_pairs": int(len(res.i)), "added_pairs": int(len(res.added[0])), "dense_s": t_dense,
            "sparse_s": t_sparse, "sparse_steps_s": res.seconds}


def large(n: int, knn: int, seed: int = 0) -> dict:
    """The sparse recovery alone on n in-memory models."""
    from recovery.sparse import recover_matrix
    from recovery.synthetic_large import edge_accuracy, large_forest

    t0 = time.perf_counter()
    f = large_forest(n, seed=seed)
    t_gen = time.perf_counter() - t0
    t = time.perf_counter()
    k = kurtosis_rows(f.x)
    t_k = time.perf_counter() - t
    t = time.perf_counter()
    res = recover_matrix(f.x, k, sparse={"knn": knn})
    t_rec = time.perf_counter() - t
    return {"part": "large", "n": n, "trees": int(f.tree.max()) + 1, "max_depth": int(f.depth.max()),
            "generate_s": t_gen, "kurtosis_s": t_k, "recover_s": t_rec, "end_to_end_s": time.perf_counter() - t0,
            "steps_s": res.seconds, "peak_rss_gib": _peak_mib() / 1024, "accuracy": edge_accuracy(f.parent, res.parent),
            "recall_true_edges": _recall(f.parent, res), "candidate_pairs": int(len(res.i)),
            "added_pairs": int(len(res.added[0])), "clusters": res.clustering.n_clusters, "groups": res.n_groups}


def write(n: int, folder: str, seed: int = 0) -> dict:
    """Generate a forest of n models and write it as a model folder (safetensors files + graph.json)."""
    from recovery.synthetic_large import large_forest, write_folder

    t = time.perf_counter()
    f = large_forest(n, seed=seed)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    write_folder(f, folder)
    return {"part": "write", "n": n, "generate_s": t_gen, "write_s": time.perf_counter() - t,
            "trees": int(f.tree.max()) + 1, "max_depth": int(f.depth.max())}


def large_files(n: int, knn: int, seed: int = 0) -> dict:
    """End to end from files: a child process writes n model files; this one runs `recover(candidates=knn)`
    on the folder (discovery, reading, recovery, tree.json dict, scoring against graph.json)."""
    from recovery.stage import recover

    with tempfile.TemporaryDirectory(prefix="bench_sparse_", dir=os.environ.get("BENCH_SPARSE_TMP")) as tmp:
        w = _run_part("write", n, knn, extra=[str(Path(tmp) / "forest")])
        folder = Path(tmp) / "forest"
        t = time.perf_counter()
        r = recover(folder, candidates="knn", sparse={"knn": knn}, ground_truth=folder / "graph.json", plot=False,
                    quiet=True, distance={"metric": "l2"})
        t_rec = time.perf_counter() - t
    info = r["tree"]["info"]
    return {"part": "large_files", "n": n, "trees": w["trees"], "max_depth": w["max_depth"], "write_s": w["write_s"],
            "recover_s": t_rec, "read_s": info["read_s"],
            "steps_s": {k: info[k] for k in ("neighbours_s", "groups_s", "links_s", "cluster_s", "arborescence_s")},
            "peak_rss_gib": _peak_mib() / 1024, "accuracy": r["metrics"]["edge_accuracy"],
            "clusters": len(r["tree"]["trees"]), "candidate_pairs": info["n_candidate_pairs"]}


def files(n: int, knn: int, seed: int = 0) -> dict:
    """The folder path: write n files, recover with candidates=knn and =dense through recovery.stage.recover."""
    from recovery.stage import recover
    from recovery.synthetic_large import large_forest, write_folder

    f = large_forest(n, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench_sparse_") as tmp:
        t = time.perf_counter()
        folder = write_folder(f, Path(tmp) / "forest")
        t_write = time.perf_counter() - t
        common = dict(ground_truth=folder / "graph.json", plot=False, quiet=True, distance={"metric": "l2"})
        t = time.perf_counter()
        sp = recover(folder, candidates="knn", sparse={"knn": knn}, **common)
        t_sparse = time.perf_counter() - t
        t = time.perf_counter()
        de = recover(folder, candidates="dense", **common)
        t_dense = time.perf_counter() - t
    par = lambda r: {e["child"]: e["parent"] for e in r["tree"]["edges"]}  # noqa: E731
    return {"part": "files", "n": n, "write_s": t_write, "sparse_s": t_sparse, "dense_s": t_dense,
            "sparse_accuracy": sp["metrics"]["edge_accuracy"], "dense_accuracy": de["metrics"]["edge_accuracy"],
            "parents_equal": par(sp) == par(de), "peak_rss_gib": _peak_mib() / 1024}


def _run_part(part: str, n: int, knn: int, extra: list[str] | None = None) -> dict:
    """One part in a fresh process (clean peak RSS); returns its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--part", part, str(n), "--knn", str(knn)] + (["--dir", *extra] if extra else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(r: dict) -> str:
    """Human-readable lines for one part's result."""
    load = "load average %.2f %.2f %.2f" % os.getloadavg()
    if r["part"] == "compare":
        return (f"compare n={r['n']} ({r['trees']} trees, depth <= {r['max_depth']}): edge accuracy dense "
                f"{r['dense_accuracy']:.4f} sparse {r['sparse_accuracy']:.4f}; parents equal {r['parents_equal']}, "
                f"clusters equal {r['clusters_equal']} {r['n_clusters']}; recall of true edges "
                f"{r['recall_true_edges']:.4f}, of the dense method's edges {r['recall_dense_edges']:.4f} among the "
                f"nearest-neighbour candidates ({r['candidate_pairs']} pairs with {r['added_pairs']} added by the "
                f"certificate); merge heights max rel. diff within groups "
                f"{r['heights_within_groups_max_rel_diff']:.1e}, between groups "
                f"{r['heights_between_groups_max_rel_diff']:.1e}; dense {r['dense_s']:.1f} s, sparse "
                f"{r['sparse_s']:.1f} s ({load})")
    if r["part"] == "large_files":
        steps = ", ".join(f"{k[:-2]} {v:.0f}" for k, v in r["steps_s"].items())
        return (f"large n={r['n']} from files ({r['trees']} trees, depth <= {r['max_depth']}; writing the files took "
                f"{r['write_s']:.0f} s, not counted): recover(candidates=knn) end to end {r['recover_s']:.0f} s (read "
                f"{r['read_s']:.0f}, {steps}), peak RSS {r['peak_rss_gib']:.2f} GiB; edge accuracy "
                f"{r['accuracy']:.4f}; {r['clusters']} clusters, {r['candidate_pairs']} candidate pairs ({load})")
    if r["part"] == "large":
        steps = ", ".join(f"{k[:-2]} {v:.0f}" for k, v in r["steps_s"].items())
        return (f"large n={r['n']} in memory ({r['trees']} trees, depth <= {r['max_depth']}): end to end "
                f"{r['end_to_end_s']:.0f} s (generate {r['generate_s']:.0f}, kurtosis {r['kurtosis_s']:.0f}, "
                f"recover {r['recover_s']:.0f}: {steps}), peak RSS {r['peak_rss_gib']:.2f} GiB; edge accuracy "
                f"{r['accuracy']:.4f}, recall of true edges {r['recall_true_edges']:.4f} among the nearest-neighbour "
                f"candidates ({r['candidate_pairs']} pairs with {r['added_pairs']} added by the certificate); "
                f"{r['groups']} groups, {r['clusters']} clusters ({load})")
    return (f"files n={r['n']}: wrote {r['n']} safetensors files in {r['write_s']:.0f} s; recover candidates=knn "
            f"{r['sparse_s']:.0f} s (accuracy {r['sparse_accuracy']:.4f}), candidates=dense {r['dense_s']:.0f} s "
            f"(accuracy {r['dense_accuracy']:.4f}); parents equal {r['parents_equal']}; peak RSS "
            f"{r['peak_rss_gib']:.2f} GiB ({load})")


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=int, nargs="*", default=[2000, 10000])
    ap.add_argument("--large", type=int, nargs="*", default=[100000])
    ap.add_argument("--files", type=int, nargs="*", default=[10000])
    ap.add_argument("--knn", type=int, default=96)
    ap.add_argument("--large-files", type=int, nargs="*", default=[100000])
    ap.add_argument("--part", nargs=2, metavar=("PART", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.part:
        if a.part[0] == "write":
            print(json.dumps(write(int(a.part[1]), a.dir)))
            return 0
        fn = {"compare": compare, "large": large, "large_files": large_files, "files": files}[a.part[0]]
        print(json.dumps(fn(int(a.part[1]), a.knn)))
        return 0
    print(f"bench_sparse: {os.cpu_count()} cores, knn={a.knn}")
    for part, sizes in (("large_files", a.large_files), ("large", a.large), ("compare", a.compare),
                        ("files", a.files)):
        for n in sizes:
            print(report(_run_part(part, n, a.knn)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
