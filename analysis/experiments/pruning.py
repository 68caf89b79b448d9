"""Table 4 / Fig. 15: robustness to pruning. Every model of an FT-like graph is pruned with
torch.nn.utils.prune.l1_unstructured (each weight tensor of >= 2 dims, the given fraction of its smallest-|w|
entries set to zero, then prune.remove so only the pruned weight remains) and the graph is recovered again.
Pruned copies are cached under `cache_dir` and reused."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.utils.prune as prune
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.graphs import derived_graph, resolve_graph
from analysis.recover import accuracy_note, accuracy_run
from analysis.report import knobs, run_experiment, save_figure, write_table

NAME = "pruning"
PAPER = {0.0: 0.89, 0.1: 0.89, 0.3: 0.88, 0.5: 0.86, 0.7: 0.87, 0.9: 0.85, 0.91: 0.84, 0.92: 0.84, 0.93: 0.84,
         0.94: 0.84, 0.95: 0.80, 0.96: 0.78, 0.97: 0.77, 0.98: 0.73, 0.99: 0.68}


def prune_tensor(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """l1_unstructured pruning of one tensor (>= 2 dims; others returned as they are), made permanent."""
    if weight.ndim < 2 or amount <= 0 or not weight.is_floating_point():
        return weight
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    prune.l1_unstructured(holder, "weight", amount=float(amount))
    prune.remove(holder, "weight")  # weight_orig * weight_mask -> a plain weight
    return holder.weight.detach()


def param_counts(graph_dir: Path, node: str) -> tuple[int, int]:
    """(zero, non-zero) entries over the >= 2-dim floating tensors of one model."""
    from safetensors.torch import load_file

    zero = total = 0
    for t in load_file(str(Path(graph_dir) / "models" / f"{node}.safetensors")).values():
        if t.ndim >= 2 and t.is_floating_point():
            zero += int((t == 0).sum())
            total += t.numel()
    return zero, total - zero


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    source = resolve_graph(cfg, k.graph)
    cache = Path(k.cache_dir)
    rows = []
    for amount in [float(a) for a in k.amounts]:
        if not 0.0 <= amount < 1.0:
            raise ValueError(f"{NAME}: pruning amount {amount} is not in [0, 1)")
        graph_dir = source if amount == 0 else derived_graph(
            source, cache / f"{source.name}-pruned{round(amount * 100):02d}",
            lambda name, t, a=amount: prune_tensor(t, a), tag={"prune": "l1_unstructured", "amount": amount})
        row = accuracy_run(cfg, f"{amount:.0%}", {"path": str(graph_dir)}, k.get("recovery"))
        first = row["roots"][0]
        row["amount"] = amount
        row["pruned_params"], row["kept_params"] = param_counts(graph_dir, first)
        rows.append(row)
    return {"graph": source.name, "rows": rows}


def render(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    rows = results["rows"]
    roots = [t for t in rows[0]["per_tree"]]
    frame = pd.DataFrame([{"pruning": r["label"], **r["per_tree"], "Model Graph": r["edge_accuracy"],
                           "paper graph": PAPER.get(round(r["amount"], 2)), "# pruned params": r["pruned_params"],
                           "# non-pruned params": r["kept_params"]} for r in rows])
    write_table(frame[["pruning", *roots, "Model Graph", "paper graph", "# pruned params", "# non-pruned params"]],
                out_dir, NAME, caption=f"Pruning robustness on {results['graph']}: edge accuracy per tree and "
                "graph (parameter counts of one model's >= 2-dim tensors)")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot([100 * r["amount"] for r in rows], [r["edge_accuracy"] for r in rows], "-o", ms=4,
            label=f"ours ({results['graph']})")
    ax.plot([100 * a for a in PAPER], list(PAPER.values()), "--s", ms=3, color="gray", label="paper (ViT-B)")
    ax.set_xlabel("weights pruned per tensor (%)")
    ax.set_ylabel("Model Graph edge accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Robustness to l1-unstructured pruning")
    ax.legend()
    save_figure(fig, out_dir, NAME)


def describe(results: dict) -> dict:
    rows = results["rows"]
    ours = ", ".join(f"{r['label']}: {r['edge_accuracy']:.3f}" for r in rows)
    notes = "; ".join(accuracy_note(r, PAPER[round(r["amount"], 2)], f"{r['label']} accuracy")
                      for r in rows if round(r["amount"], 2) in PAPER and r["amount"] in (0.0, 0.9, 0.95, 0.99))
    return {"title": "Table 4 / Fig. 15: robustness to pruning", "ours": ours, "notes": notes,
            "paper": "0%: 0.89, 90%: 0.85, 95%: 0.80, 99%: 0.68 (random ~0.05)"}


@experiment(NAME, order=120, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
