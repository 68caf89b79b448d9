"""Table 5: robustness to quantization. In each of `repeats` seeded draws, every model of an FT-like graph is
quantized with probability `fraction` (the paper: 50%), then the graph is recovered again.

- fp16: every floating tensor rounded to float16 and back.
- int8: every floating tensor of >= 2 dims quantized per row (absmax, LLM.int8 vector-wise) and dequantized:
  with bitsandbytes `int8_vectorwise_quant` (on the float16 weights, as its documentation asks) where it
  imports and runs, otherwise the same round trip in plain torch (`int8_rowwise_torch`); the backend used is
  recorded. The two agree (tests check it where bitsandbytes is installed).
Quantized models are stored dequantized as float32 (what recovery would compute on); unchanged models are
hard links. Copies are cached under `cache_dir` and reused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.graphs import derived_graph, read_graph, resolve_graph
from analysis.recover import accuracy_note, accuracy_run
from analysis.report import knobs, mean_std, ours_vs_paper, run_experiment, save_figure, write_table
from common.seed import derive_seed

NAME = "quantization"
PAPER = {"none": (0.89, 0.0), "fp16": (0.883, 0.0044), "int8": (0.883, 0.0078)}


def int8_rowwise_torch(w: torch.Tensor) -> torch.Tensor:
    """Per-row absmax int8 round trip in plain torch: q = round(127 w / max|w_row|), w' = q max|w_row| / 127."""
    rows = w.reshape(w.shape[0], -1).float()
    scale = rows.abs().amax(dim=1, keepdim=True)
    q = torch.where(scale > 0, torch.round(rows * 127.0 / scale.clamp_min(1e-30)), torch.zeros_like(rows))
    return (q.clamp(-127, 127) * scale / 127.0).reshape(w.shape).to(w.dtype)


def int8_rowwise_bnb(w: torch.Tensor) -> torch.Tensor:
    """The same round trip with bitsandbytes' LLM.int8 vector-wise quantizer (input float16, as documented)."""
    import bitsandbytes.functional as bnbf

    rows = w.reshape(w.shape[0], -1).to(torch.float16)
    q, scale, _ = bnbf.int8_vectorwise_quant(rows)
    return (q.float() * scale.float()[:, None] / 127.0).reshape(w.shape).to(w.dtype)


def int8_backend(prefer: str = "bitsandbytes") -> str:
    """"bitsandbytes" when it imports and quantizes a small tensor here, else "torch"."""
    if prefer == "torch":
        return "torch"
    try:
        int8_rowwise_bnb(torch.randn(4, 8))
        return "bitsandbytes"
    except Exception:  # not installed, or no kernel for this platform: fall back, and record it
        return "torch"


def quantizer(method: str, backend: str) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """transform(name, tensor) for derived_graph."""
    def fp16(name: str, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float16).to(t.dtype) if t.is_floating_point() else t

    def int8(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 2 or not t.is_floating_point():
            return t
        return int8_rowwise_bnb(t) if backend == "bitsandbytes" else int8_rowwise_torch(t)
    if method not in ("fp16", "int8"):
        raise ValueError(f"{NAME}: unknown method {method!r}; use fp16 or int8")
    return fp16 if method == "fp16" else int8


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    source = resolve_graph(cfg, k.graph)
    nodes = read_graph(source)["nodes"]
    backend = int8_backend(str(k.int8_backend))
    base = accuracy_run(cfg, "none", {"path": str(source)}, k.get("recovery"))
    runs = []
    for method in k.methods:
        for r in range(int(k.repeats)):
            rng = np.random.default_rng(derive_seed(cfg.seed, NAME, method, r))
            chosen = {n for n in nodes if rng.random() < float(k.fraction)}
            dst = Path(k.cache_dir) / f"{source.name}-{method}-r{r}"
            tag = {"quantize": method, "backend": backend if method == "int8" else "torch", "repeat": r}
            graph_dir = derived_graph(source, dst, quantizer(method, backend), tag=tag, nodes=chosen)
            row = accuracy_run(cfg, method, {"path": str(graph_dir)}, k.get("recovery"))
            row.update(repeat=r, n_quantized=len(chosen))
            runs.append(row)
    return {"graph": source.name, "n_models": len(nodes), "int8_backend": backend, "fraction": float(k.fraction),
            "none": base, "runs": runs}


def summary(results: dict) -> list[dict]:
    """One row per method: per-tree and graph accuracy as mean ± std over repeats (numbers and strings)."""
    roots = list(results["none"]["per_tree"])
    out = [{"method": "none", **{t: results["none"]["per_tree"][t] for t in roots},
            "graph mean": results["none"]["edge_accuracy"], "graph std": 0.0, "repeats": 1}]
    for method in dict.fromkeys(r["label"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["label"] == method]
        accs = [r["edge_accuracy"] for r in runs]
        out.append({"method": method, **{t: mean_std([r["per_tree"][t] for r in runs]) for t in roots},
                    "graph mean": float(np.mean(accs)), "graph std": float(np.std(accs)), "repeats": len(runs)})
    return out


def render(results: dict, out_dir: Path) -> None:
    rows = summary(results)
    for r in rows:
        p = PAPER.get(r["method"])
        r["paper graph"] = None if p is None else f"{p[0]} ± {p[1]}"
    write_table(pd.DataFrame(rows), out_dir, NAME, caption=f"Quantization of ~{results['fraction']:.0%} of the "
                f"models of {results['graph']}: edge accuracy, mean ± std over repeats (int8 via "
                f"{results['int8_backend']})")
    runs = pd.DataFrame([{"method": r["label"], "repeat": r["repeat"], "quantized models": r["n_quantized"],
                          "Model Graph": r["edge_accuracy"], "clustering": r["clustering_accuracy"]}
                         for r in results["runs"]])
    write_table(runs, out_dir, f"{NAME}_runs", caption="Every quantized draw")
    bars = [{"label": r["method"], "ours": r["graph mean"], "ours_err": r["graph std"],
             "paper": PAPER[r["method"]][0] if r["method"] in PAPER else None,
             "paper_err": PAPER[r["method"]][1] if r["method"] in PAPER else None} for r in rows]
    save_figure(ours_vs_paper(bars, title=f"Quantization of ~{results['fraction']:.0%} of the models: edge accuracy "
                                          "(mean ± std over repeats)"), out_dir, NAME)


def describe(results: dict) -> dict:
    rows = summary(results)
    ours = "; ".join(f"{r['method']} {r['graph mean']:.3f} ± {r['graph std']:.4f}" for r in rows)
    notes = "; ".join(accuracy_note(results["none"], PAPER[r["method"]][0], f"{r['method']} accuracy",
                                    accuracy=r["graph mean"]) for r in rows if r["method"] in PAPER)
    drop = rows[0]["graph mean"] - min(r["graph mean"] for r in rows)
    notes += f". Largest drop from unquantized: {drop:.3f} (paper: < 0.01). int8 backend: {results['int8_backend']}"
    return {"title": "Table 5: robustness to quantization", "ours": ours, "notes": notes,
            "paper": "none 0.89; fp16 0.883 ± 0.0044; int8 (bitsandbytes) 0.883 ± 0.0078 (10 repeats)"}


@experiment(NAME, order=130, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
