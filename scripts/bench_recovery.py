"""Benchmark recovery's weight analysis against the direct approach, in one process, on synthetic ViT weights.

LoRA ranks: a 3-level LoRA tree (1 root, `--branch` children, `--branch`^2 grandchildren; 21 models by default)
of ViT-B-sized models (dim 768, depth 12), merged LoRA deltas of rank 8/16/32/64 on the fused qkv matrices; ranks
on the 12 value layers (``layers.kinds=[value]``). Direct = load both models per pair, ``matrix_rank`` per pair
and layer, max over layers; it runs on `--direct-pairs` random pairs (all with 0) and its time is scaled to all
pairs; its ranks must equal ours on those pairs. Both use one explicit tolerance. Then the whole
``python run.py +experiment=recover`` on the same folder, its wall time against the analysis time it reports.
l2: `--l2-models` ViT-sized models streamed by ``analyze_folder`` in a child process (its peak RSS is reported);
direct = load both models per pair and take Frobenius norms, on `--direct-pairs` pairs, scaled to all pairs.
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


def bench_l2(args, tmp: Path) -> None:
    shapes = vit_shapes(args.dim, args.l2_depth)
    rng = np.random.default_rng(args.seed)
    root = random_weights(shapes, rng)
    from safetensors.numpy import save_file
    t = time.perf_counter()
    for i in range(args.l2_models):  # a star of full fine-tunes, one model in memory at a time
        save_file(finetune(root, rng, "full", 1e-2), str(tmp / f"m{i:03d}.safetensors"))
    size = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    print(f"[l2] wrote {args.l2_models} models, {size / 1e9:.2f} GB, in {time.perf_counter() - t:.1f}s")
    code = ("import json,resource,sys,time; sys.path.insert(0, %r); from recovery.weights import analyze_folder; "
            "t=time.perf_counter(); r=analyze_folder(%r, distance={'metric':'l2'}, progress=False); "
            "print(json.dumps({'s': time.perf_counter()-t, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20,"
            " 'd': r.l2.tolist(), 'ids': r.ids, 'layers': r.layers}))") % (str(Path(__file__).resolve().parents[1]), str(tmp))
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    ids, d = out["ids"], np.array(out["d"])
    pairs = list(itertools.combinations(range(len(ids)), 2))
    chosen = [pairs[k] for k in rng.choice(len(pairs), min(args.direct_pairs or len(pairs), len(pairs)), replace=False)]
    t = time.perf_counter()
    err = 0.0
    for i, j in chosen:
        a, b = load_file(str(tmp / f"{ids[i]}.safetensors")), load_file(str(tmp / f"{ids[j]}.safetensors"))
        v = np.mean([np.linalg.norm(a[k].astype(np.float64) - b[k]) for k in out["layers"]])
        err = max(err, abs(v - d[i, j]) / v)
    direct = (time.perf_counter() - t) * len(pairs) / len(chosen)
    print(f"[l2] {len(ids)} models ({size / 1e9:.2f} GB): ours {out['s']:.1f}s, peak RSS {out['rss']:.2f} GiB; "
          f"direct pairwise {direct:.1f}s (scaled from {len(chosen)} of {len(pairs)} pairs); ratio {direct / out['s']:.1f}x; "
          f"max rel. difference {err:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=12, help="ViT blocks for the LoRA benchmark")
    p.add_argument("--branch", type=int, default=4, help="children per node: 1 + b + b^2 LoRA models")
    p.add_argument("--lora-scale", type=float, default=1e-2)
    p.add_argument("--tol", type=float, default=1e-3, help="explicit rank tolerance shared by both methods")
    p.add_argument("--l2-models", type=int, default=105)
    p.add_argument("--l2-depth", type=int, default=12)
    p.add_argument("--direct-pairs", type=int, default=10, help="pairs the direct method runs on (0 = all)")
    p.add_argument("--only", choices=["lora", "l2"], default=None)
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
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
