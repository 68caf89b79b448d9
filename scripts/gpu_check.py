"""GPU check, under 5 minutes on one GPU: smoke runs of the paper graphs, then recovery of what they built.

    python scripts/gpu_check.py                       # on a GPU machine: graph_ft and graph_lora_v, 1 + 2 + 4 trees
    python scripts/gpu_check.py --out results/runtime/gpu_check.txt   # also write the report there
    python scripts/gpu_check.py --cpu                 # a quick sanity run on CPU (1 + 2 trees, 2 steps, batch 2)

Each graph is a `smoke=true` run of its experiment (data_gen/smoke.py: randomly initialised ViT-B/16 roots of the
real architecture, tensorflow-datasets mock VTAB data at 224 px, a few optimizer steps per fine-tune), run as
`python run.py +experiment=graph_<name> smoke=true ...` in a subprocess, exactly as a user would; then
`python run.py +experiment=recover input=<graph> ground_truth=<graph>/graph.json`. The report gives, per fine-tune,
its step time (mean after the first step, and the first step's), peak GPU memory, precision and device; per graph the
build and recovery wall times and the recovered tree with its accuracy. Then recovery's own device path
(`recovery.device`, issue 15 goal 5): `tests/test_recovery_device.py` (its cuda cases run where a GPU is visible), and
the Gram (l2) of a ViT-B MLP stack and the LoRA ranks of a ViT-B value-layer stack timed on the device against the
numpy path, with their agreement (l2's largest relative difference, ranks equal). Nothing needs the hub or the network.
Exit status: 0 when every run succeeded, 1 otherwise (the failing command's output tail is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.io import read_json, write_text  # noqa: E402

GRAPHS = ("ft", "lora_v")
# Smoke sizes: (depth, children, steps, batch size, mock examples per split).
GPU_SIZES = (2, 2, 20, 32, 64)
CPU_SIZES = (1, 2, 2, 2, 2)
# Kernel sizes: (models in the Gram stack, its layer shape, LoRA models, their square layer's side).
GPU_KERNEL_SIZES = (105, (3072, 768), 21, 768)
CPU_KERNEL_SIZES = (21, (384, 96), 7, 96)


def run_py(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[float, str]:
    """Run `python run.py ARGS`; return (wall seconds, output). Raises RuntimeError with the output tail on failure."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"`python run.py {' '.join(args)}` failed (rc {res.returncode}):\n{out[-4000:]}")
    return time.perf_counter() - start, out


def fine_tune_rows(graph: dict) -> list[str]:
    """One report line per fine-tuned node of a graph.json: step time, memory, precision, device."""
    rows = []
    for node in graph["nodes"]:
        m = graph["meta"][node]
        if m.get("parent") is None:
            continue
        steps, train_s, step_s = m.get("steps") or 0, m.get("train_seconds"), m.get("step_seconds")
        first = train_s - (steps - 1) * step_s if step_s is not None else train_s
        step = "   n/a" if step_s is None else f"{step_s:6.3f}"
        mem = m.get("gpu_memory_peak_mb")
        rows.append(f"  {node:<12} {m['method']:<5} {m['task']:<26} {steps:>3} steps  {step} s/step "
                    f"(first {'n/a' if first is None else f'{first:.2f}'} s)  "
                    f"peak {'n/a' if mem is None else f'{mem / 1024:6.2f} GiB'}  {m.get('precision')}  "
                    f"{m.get('device_name') or m.get('accelerator')}  total {m.get('seconds', 0):6.1f} s")
    return rows


def tree_rows(tree: dict) -> list[str]:
    """The recovered tree as indented lines (roots first, children under their parent)."""
    children: dict[str, list[str]] = {}
    for e in tree["edges"]:
        children.setdefault(e["parent"], []).append(e["child"])
    lines: list[str] = []

    def walk(node: str, depth: int) -> None:
        lines.append("    " + "  " * depth + node)
        for child in sorted(children.get(node, [])):
            walk(child, depth + 1)
    for node in tree["nodes"]:
        if node.get("root") or node.get("base_model") is None:
            walk(node["id"], 0)
    return lines


def check_graph(name: str, work: Path, sizes: tuple[int, ...], cpu: bool, env: dict[str, str],
                timeout_s: float) -> list[str]:
    """Smoke-build graph `name`, recover it, and return its report lines."""
    depth, children, steps, batch, examples = sizes
    common = [f"paths.graphs_dir={work / 'graphs'}", f"paths.log_dir={work / 'logs'}",
              f"paths.data_dir={work / 'data'}", f"paths.results_dir={work / 'results'}"]
    build = [f"+experiment=graph_{name}", "smoke=true", "data_gen.progress=false", "data_gen.force=true",
             "data_gen.smoke.roots=1", f"data_gen.smoke.depth={depth}", f"data_gen.smoke.children={children}",
             f"data_gen.smoke.steps={steps}", f"data_gen.smoke.batch_size={batch}",
             f"data_gen.smoke.examples={examples}", *(["data_gen.accelerator=cpu"] if cpu else []), *common]
    build_s, _ = run_py(build, env, timeout_s)
    graph_dir = work / "graphs" / f"{name}_smoke"
    graph = read_json(graph_dir / "graph.json")
    out_dir = work / "recover" / name
    recover_s, _ = run_py(["+experiment=recover", f"input={graph_dir}", f"ground_truth={graph_dir / 'graph.json'}",
                           f"output_dir={out_dir}", *common], env, timeout_s)
    tree, metrics = read_json(out_dir / "tree.json"), read_json(out_dir / "metrics.json")
    true_edges = sorted(f"{p} -> {c}" for p, c in graph["edges"])
    lines = [f"== graph_{name} smoke: {len(graph['nodes'])} models ({graph['meta'][graph['nodes'][0]]['source']}),"
             f" built in {build_s:.1f} s, recovered in {recover_s:.1f} s",
             "fine-tunes (step time: mean after the first step; the first pays for set-up):", *fine_tune_rows(graph),
             f"true edges:      {', '.join(true_edges)}",
             f"recovered edges: {', '.join(sorted(e['parent'] + ' -> ' + e['child'] for e in tree['edges']))}",
             "recovered tree:", *tree_rows(tree),
             "metrics: " + json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                      sort_keys=True)]
    return lines


def lora_stack(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """A LoRA tree's merged square value layers (n, dim, dim) float32: a root, then children of random earlier models
    with merged deltas (recovery.synthetic.finetune) of rank 8-64 (at most dim / 4)."""
    from recovery.synthetic import finetune

    ws = [(0.02 * rng.standard_normal((dim, dim))).astype(np.float32)]
    for _ in range(n - 1):
        r = int(rng.choice([k for k in (8, 16, 32, 64) if k <= max(dim // 4, 8)]))
        ws.append(finetune({"value": ws[int(rng.integers(len(ws)))]}, rng, "lora", 1e-2, r)["value"])
    return np.stack(ws)


def _timed(fn, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def kernel_rows(device: str, sizes: tuple, seed: int = 0) -> tuple[list[str], bool]:
    """recovery's torch kernels on `device` against the numpy path: the l2 Gram of an (n, *shape) stack of fine-tunes
    and the LoRA ranks of a LoRA stack; times (device: after a warm-up, host transfers included) and agreement."""
    from recovery.distances import layer_ranks, pairwise_sq_dists
    from recovery.kernels import Kernel

    n, shape, lora_n, dim = sizes
    rng = np.random.default_rng(seed)
    base = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    x = np.stack([base + 1e-3 * rng.standard_normal(shape, dtype=np.float32) for _ in range(n)])
    kernel = Kernel("torch", device)
    pairwise_sq_dists(x[:2], kernel=kernel)   # warm-up: CUDA context, library handles
    t_np, ref = _timed(pairwise_sq_dists, x, kernel=Kernel("numpy", "cpu"))
    t_dev, got = _timed(pairwise_sq_dists, x, kernel=kernel)
    off = ~np.eye(n, dtype=bool)
    rel = float(np.max(np.abs(np.sqrt(got[off]) - np.sqrt(ref[off])) / np.sqrt(ref[off])))
    ws = lora_stack(lora_n, dim, rng)
    r_np, ranks_ref = _timed(layer_ranks, ws, "weight", seed=seed)
    r_dev, ranks = _timed(layer_ranks, ws, "weight", seed=seed, kernel=kernel)
    equal = bool(np.array_equal(ranks.ranks, ranks_ref.ranks))
    pair_ranks = ranks_ref.ranks[~np.eye(lora_n, dtype=bool)]
    ok = equal and rel < 1e-5
    return [f"== recovery kernels: torch on {kernel.describe()} vs numpy (cpu)",
            f"l2 Gram, {n} models x {shape[0]}x{shape[1]} ({x.nbytes / 1e9:.2f} GB): numpy {t_np:.2f} s, {device} "
            f"{t_dev:.2f} s ({t_np / t_dev:.1f}x); largest relative l2 difference {rel:.1e}",
            f"LoRA ranks, {lora_n} models x {dim}x{dim} (pair ranks {int(pair_ranks.min())}-{int(pair_ranks.max())}): "
            f"numpy {r_np:.2f} s, {device} {r_dev:.2f} s ({r_np / r_dev:.1f}x); ranks equal: {equal}"], ok


def device_tests(env: dict[str, str], timeout_s: float) -> tuple[list[str], bool]:
    """tests/test_recovery_device.py as a user runs it (its cuda cases skip without a GPU); its summary lines."""
    cmd = [sys.executable, "-m", "pytest", "tests/test_recovery_device.py", "-q", "-rs", "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    tail = [ln for ln in res.stdout.splitlines() if ln.strip()][-1:] or [res.stderr[-2000:]]
    return ["== python -m pytest tests/test_recovery_device.py: " + tail[0]], res.returncode == 0


def header(cpu: bool) -> list[str]:
    """Machine and versions."""
    import torch

    lines = [f"gpu_check  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {'--cpu sanity run' if cpu else 'GPU run'}",
             f"python {platform.python_version()}  torch {torch.__version__}  host cores {os.cpu_count()}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU 0 of {torch.cuda.device_count()}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        lines.append("no CUDA GPU visible")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the report (and write it to --out)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny sanity run on CPU (no GPU needed)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    ap.add_argument("--workdir", type=Path, default=None, help="where graphs and logs go (default: a temp folder)")
    ap.add_argument("--graphs", nargs="+", default=list(GRAPHS), help=f"graph configs (default: {' '.join(GRAPHS)})")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run.py call")
    args = ap.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU visible: run on a GPU machine, or pass --cpu for the CPU sanity run", file=sys.stderr)
        return 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    sizes = CPU_SIZES if args.cpu else GPU_SIZES
    start = time.perf_counter()
    lines = header(args.cpu)
    lines.append("smoke sizes: depth {}, children {}, {} steps of batch {}, {} mock examples a split".format(*sizes))
    ok = True
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.workdir or Path(tmp)
        for name in args.graphs:
            print(f"graph_{name}: building and recovering ...", file=sys.stderr, flush=True)
            try:
                lines += check_graph(name, work, sizes, args.cpu, env, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                ok = False
                lines.append(f"== graph_{name}: FAILED\n{e}")
    print("recovery kernels and device tests ...", file=sys.stderr, flush=True)
    try:
        rows, good = kernel_rows("cpu" if args.cpu else "cuda", CPU_KERNEL_SIZES if args.cpu else GPU_KERNEL_SIZES)
        rows2, good2 = device_tests({"OMP_NUM_THREADS": "1", **env}, args.timeout)
        lines += rows + rows2
        ok = ok and good and good2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        ok = False
        lines.append(f"== recovery kernels: FAILED\n{e}")
    lines.append(f"total wall time {time.perf_counter() - start:.1f} s; {'all runs succeeded' if ok else 'FAILED'}")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        write_text(args.out, report)
        print(f"written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
