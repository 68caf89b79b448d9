"""Benchmark recovery's weight analysis against the direct approach, in one process, on synthetic ViT weights.

LoRA ranks: a 3-level LoRA tree (1 root, `--branch` children, `--branch`^2 grandchildren; 21 models by default)
of ViT-B-sized models (dim 768, depth 12), merged LoRA deltas of rank 8/16/32/64 on the fused qkv matrices; ranks
on the 12 value layers (``layers.kinds=[value]``). Direct = load both models per pair, ``matrix_rank`` per pair
and layer, max over layers; it runs on `--direct-pairs` random pairs (all with 0) and its time is scaled to all
pairs; its ranks must equal ours on those pairs. Both use one explicit tolerance. Then the whole
``python run.py +experiment=recover`` on the same folder, its wall time against the analysis time it reports.
l2: `--l2-models` ViT-sized full fine-tunes of one root; ``python run.py +experiment=recover recovery=paper
recovery.distance.metric=l2`` on them against ``cat`` of the same files, each in the same cache state: cold (files
evicted from the page cache with posix_fadvise before each of the two) and warm (read twice first); its peak RSS
and the bytes it read; a few recovered edge distances against a direct float64 computation.
Sparse (`scripts/bench_sparse.py`): 100,000 one-layer models recovered end to end on nearest-neighbour candidate
edges, and sparse == dense at 2,000 and 10,000 models.
Synthetic weights: speed and memory only, not evidence for the paper.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recovery.direct_io import evict  # noqa: E402
from recovery.synthetic import finetune, random_weights, vit_shapes, write_tree  # noqa: E402
from recovery.weights import analyze_folder  # noqa: E402


def tree(branch: int) -> dict[str, list[str]]:
    kids = {"root": [f"c{i}" for i in range(branch)]}
    for i in range(branch):
        kids[f"c{i}"] = [f"c{i}g{j}" for j in range(branch)]
    return kids


def bench_lora(args, tmp: Path) -> None:
    shapes = vit_shapes(args.dim, args.depth)
    t = time.perf_counter()
    write_tree(tmp, shapes, tree(args.branch), ["root"], seed=args.seed, method="lora", ranks=(8, 16, 32, 64),
               scale=args.lora_scale, graph=False)
    ids = sorted(p.stem for p in tmp.glob("*.safetensors"))
    print(f"[lora] wrote {len(ids)} models of {sum(np.prod(s) for s in shapes.values()) / 1e6:.1f}M params "
          f"in {time.perf_counter() - t:.1f}s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    opts = {"layers": {"kinds": ["value"]}, "distance": {"metric": "lora_rank", "rank_tol": args.tol}}
    analyze_folder(tmp, **opts, direction={"kinds": ["value"]}, progress=False)   # warm the page cache
    t = time.perf_counter()
    res = analyze_folder(tmp, **opts, direction={"kinds": ["value"]}, progress=False)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    dense_dir = analyze_folder(tmp, **opts, progress=False)   # the paper's direction layers (dense) read as well
    ours_dense = time.perf_counter() - t
    assert np.array_equal(dense_dir.distance, res.distance)
    pairs = list(itertools.combinations(range(len(ids)), 2))
    rng = np.random.default_rng(args.seed)
    chosen = pairs if args.direct_pairs == 0 else [pairs[k] for k in rng.choice(len(pairs), args.direct_pairs, replace=False)]
    value = {name: (rows, name.split("[")[0]) for name, rows in _value_rows(res.layers, args.dim)}
    t = time.perf_counter()
    same = True
    for i, j in chosen:   # the direct method: load both models, matrix_rank of every layer's difference
        a, b = load_file(str(tmp / f"{ids[i]}.safetensors")), load_file(str(tmp / f"{ids[j]}.safetensors"))
        r = max(np.linalg.matrix_rank(a[k][rows].astype(np.float64) - b[k][rows], tol=args.tol)
                for rows, k in value.values())
        same &= r == res.distance[res.ids.index(ids[i]), res.ids.index(ids[j])]
    direct = (time.perf_counter() - t) * len(pairs) / len(chosen)
    rk = res.info["ranks"]
    print(f"[lora] {len(ids)} models, {len(res.layers)} value layers, {len(pairs)} pairs, tol {args.tol}: direct "
          f"{direct:.1f}s{' (scaled from %d pairs)' % len(chosen) if len(chosen) < len(pairs) else ''}; ours "
          f"{ours:.2f}s for the whole analysis pass (read, l2, direction on the value layers, ranks), of which ranks "
          f"{rk['seconds']:.2f}s (cores decomposed {rk['fast_pairs']}, pruned by the max {rk['pruned_pairs']}, "
          f"direct {rk['direct_pairs']} pair-layers); RATIO {direct / ours:.0f}x (whole pass), "
          f"{direct / rk['seconds']:.0f}x (ranks only); with direction on the dense layers {ours_dense:.2f}s "
          f"({direct / ours_dense:.0f}x); ranks equal on {len(chosen)} pairs: {bool(same)}; "
          f"peak RSS {res.info['peak_rss_mib']} MiB")
    out = tmp.parent / "recover_out"
    cmd = [sys.executable, str(ROOT / "run.py"), "+experiment=recover", f"input={tmp}", f"output_dir={out}",
           "recovery=paper", "recovery.distance.metric=lora_rank", "'recovery.layers.kinds=[value]'",
           f"recovery.distance.rank_tol={args.tol}", "recovery.plot=false"]
    t = time.perf_counter()
    subprocess.run(" ".join(cmd), shell=True, check=True, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - t
    doc = json.loads((out / "tree.json").read_text())
    weights_s = doc["timings"]["weights_s"]
    print(f"[recover] python run.py +experiment=recover ... metric=lora_rank layers=[value]: wall {wall:.2f}s, its "
          f"analysis (weights) {weights_s:.2f}s, RATIO {wall / weights_s:.2f}x; total inside recover "
          f"{doc['timings']['total_s']:.2f}s; edges {len(doc['edges'])} "
          f"({sorted({e['base_model_relation'] for e in doc['edges']})})")


def _value_rows(layers: list[str], dim: int) -> list[tuple[str, slice]]:
    """(layer name, rows of its tensor) for value layers named like ``blocks.0.attn.qkv.weight[value]``."""
    return [(name, slice(2 * dim, 3 * dim) if name.endswith("[value]") else slice(None)) for name in layers]


def _drop_cache(files: list[Path]) -> None:
    """Evict the files from the page cache (fsync, then posix_fadvise DONTNEED: no root needed)."""
    for f in files:
        evict(f)


def _cached_share(files: list[Path]) -> float:
    """Share of the files' pages in the page cache (mincore of a read-only map), 0..1."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page, have, total = mmap.PAGESIZE, 0, 0
    for f in files:
        size = f.stat().st_size
        fd = os.open(f, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            libc.mincore(addr, size, vec)
            libc.munmap(addr, size)
        finally:
            os.close(fd)
        have += int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1))
        total += n
    return have / max(total, 1)


def _run_watched(cmd: list[str]) -> tuple[float, float, int]:
    """Run `cmd`; (wall seconds, peak RSS GiB from /proc VmHWM, bytes it read through read calls (rchar))."""
    import threading
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, rchar = [0], [0]

    def watch() -> None:
        while proc.poll() is None:
            try:
                st = Path(f"/proc/{proc.pid}/status").read_text()
                peak[0] = max(peak[0], int(st.split("VmHWM:")[1].split()[0]))
                io = Path(f"/proc/{proc.pid}/io").read_text()
                rchar[0] = int(io.split("rchar:")[1].split()[0])
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.1)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t
    w.join()
    if proc.returncode:
        raise SystemExit(f"recover failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, peak[0] / 2**20, rchar[0]


def _cat(files: list[Path]) -> float:
    t = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def _block(weights: dict, layer: str) -> np.ndarray:
    """A layer's weights: a tensor, or the q / k / v row block of a fused qkv (``name[value]``)."""
    if "[" not in layer:
        return weights[layer]
    name, part = layer[:-1].split("[")
    w = weights[name]
    k = ("query", "key", "value").index(part)
    return w[k * w.shape[0] // 3:(k + 1) * w.shape[0] // 3]


def bench_l2(args, tmp: Path) -> None:
    """`python run.py +experiment=recover recovery=paper recovery.distance.metric=l2` on a star of full fine-tunes
    of ViT-sized models, against `cat` of the same files, cold (files evicted with posix_fadvise) and warm."""
    shapes = vit_shapes(args.dim, args.l2_depth)
    rng = np.random.default_rng(args.seed)
    root = random_weights(shapes, rng)
    from safetensors.numpy import save_file
    t = time.perf_counter()
    for i in range(args.l2_models):  # a star of full fine-tunes, one model in memory at a time
        save_file(finetune(root, rng, "full", 1e-2), str(tmp / f"m{i:03d}.safetensors"))
    files = sorted(tmp.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in files)
    selected = 4 * args.l2_models * sum(int(np.prod(v)) for k, v in shapes.items() if len(v) == 2 and "head" not in k)
    print(f"[l2] wrote {args.l2_models} models ({sum(np.prod(v) for v in shapes.values()) / 1e6:.1f}M params each), "
          f"{size / 1e9:.2f} GB in files, {selected / 1e9:.2f} GB selected (2-D weights, heads excluded), in "
          f"{time.perf_counter() - t:.1f}s; free disk {shutil.disk_usage(tmp).free / 1e9:.0f} GB; "
          f"{os.cpu_count()} cores; BLAS {_blas()}")
    out = tmp.parent / "l2_out"
    cmd = [sys.executable, str(ROOT / "run.py"), "+experiment=recover", f"input={tmp}", f"output_dir={out}",
           "recovery=paper", "recovery.distance.metric=l2", "recovery.plot=false", f"recovery.device={args.device}"]
    cold = []   # (cat s, recover wall s, analysis s) of each cold alternation
    for state in ["cold"] * args.l2_repeats + ["warm"]:
        if state == "cold":
            _drop_cache(files)
            before = _cached_share(files)
            cat = _cat(files)
            _drop_cache(files)
        else:
            _cat(files)
            before = _cached_share(files)
            cat = _cat(files)
        cached = _cached_share(files)
        load = os.getloadavg()[0]
        wall, rss, rchar = _run_watched(cmd)
        doc = json.loads((out / "tree.json").read_text())
        weights_s = doc["timings"]["weights_s"]
        print(f"[l2] {state} ({100 * before:.0f}% of the files in page cache before cat, {100 * cached:.0f}% before "
              f"recover; load average {load:.1f}): cat {cat:.2f}s ({size / cat / 1e9:.2f} GB/s); recover wall "
              f"{wall:.2f}s, RATIO {wall / cat:.2f}x; its analysis (weights_s) {weights_s:.2f}s, RATIO "
              f"{weights_s / cat:.2f}x; peak RSS {rss:.2f} GiB; read by recover {rchar / 1e9:.2f} GB (rchar, "
              f"imports included) for {selected / 1e9:.2f} GB selected")
        if state == "cold":
            cold.append((cat, wall, weights_s))
    if len(cold) > 1:   # the disk's pace drifts between minutes: the median of paired ratios, and the spread
        c, w, a = (np.array(v) for v in zip(*cold))
        print(f"[l2] cold, {len(cold)} alternations: cat {np.median(c):.2f}s ({c.min():.2f}-{c.max():.2f}); recover "
              f"wall {np.median(w):.2f}s ({w.min():.2f}-{w.max():.2f}); median RATIO {np.median(w / c):.2f}x "
              f"({(w / c).min():.2f}-{(w / c).max():.2f}); analysis median RATIO {np.median(a / c):.2f}x")
    info = doc["info"]
    rel = sorted({e["base_model_relation"] for e in doc["edges"]})
    print(f"[l2] device: {info.get('device')}; edges {len(doc['edges'])} {rel}; passes {info.get('passes')}")
    err = 0.0
    for e in doc["edges"][:args.direct_pairs or 3]:   # the recovered edges' l2 against a direct computation
        a = load_file(str(tmp / f"{e['parent']}.safetensors"))
        b = load_file(str(tmp / f"{e['child']}.safetensors"))
        v = np.mean([np.linalg.norm(_block(a, k).astype(np.float64) - _block(b, k)) for k in doc["layers"]])
        err = max(err, abs(v - e["distance"]) / v)
    print(f"[l2] max rel. difference of {min(len(doc['edges']), args.direct_pairs or 3)} edge distances vs a direct "
          f"float64 computation: {err:.1e}")


def _blas() -> str:
    """numpy's BLAS, its kernel set and threads: the Gram's speed depends on them (an OPENBLAS_CORETYPE in the
    environment can pin AVX2 kernels on an AVX-512 machine)."""
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(f"{i['internal_api']} {i['version']} {i.get('architecture')} x{i['num_threads']}"
                     for i in libs) or "none found"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=12, help="ViT blocks for the LoRA benchmark")
    p.add_argument("--branch", type=int, default=4, help="children per node: 1 + b + b^2 LoRA models")
    p.add_argument("--lora-scale", type=float, default=1e-2)
    p.add_argument("--tol", type=float, default=1e-3, help="explicit rank tolerance shared by both methods")
    p.add_argument("--l2-models", type=int, default=105)
    p.add_argument("--l2-depth", type=int, default=12)
    p.add_argument("--l2-repeats", type=int, default=3, help="cold cat / recover alternations (the disk's pace "
                   "drifts: the ratio is their median)")
    p.add_argument("--direct-pairs", type=int, default=10, help="pairs the direct method runs on (0 = all)")
    p.add_argument("--only", choices=["lora", "l2", "sparse"], default=None)
    p.add_argument("--sparse-args", default="", help="arguments for scripts/bench_sparse.py (default: its own: "
                   "100k models from files and in memory, sparse vs dense at 2k and 10k)")
    p.add_argument("--device", default="auto", help="recovery.device for the l2 recover run (auto | cpu | cuda)")
    p.add_argument("--quick", action="store_true", help="small sizes: dim 192, depth 2, 12 l2 models")
    p.add_argument("--tmp", default=None, help="scratch folder (default: system temp); check free space first")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.dim, args.depth, args.l2_depth, args.l2_models, args.branch = 192, 2, 2, 12, 3
    base = Path(tempfile.mkdtemp(prefix="bench_recovery_", dir=args.tmp))
    print(f"scratch {base}; free {shutil.disk_usage(base).free / 1e9:.0f} GB")
    try:
        if args.only in (None, "lora"):
            (base / "lora").mkdir()
            bench_lora(args, base / "lora")
            shutil.rmtree(base / "lora")
        if args.only in (None, "l2"):
            (base / "l2").mkdir()
            bench_l2(args, base / "l2")
        if args.only in (None, "sparse"):  # goal 4: past the dense matrix (each part in its own process)
            from scripts import bench_sparse
            bench_sparse.main(args.sparse_args.split())
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
