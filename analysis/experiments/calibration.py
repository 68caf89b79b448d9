"""Calibration: does a built graph live in the paper's regime? Measured on the weights, never on recovery scores.

For every graph (built at a seed that no reported result uses) and every root it reports:
    - fine-tune validation accuracy vs chance (median), and convergence: a few nodes fine-tuned again from the
      same parent with the same recipe and seed but `longer`x the steps (their accuracy gain says whether the
      fine-tunes have converged);
    - edge sizes ||W_child - W_parent|| / ||W_parent|| (min / median / max, and max / min);
    - Fig. 1 rho: Pearson correlation of the weight distance (l2 on FT trees, rank on LoRA trees) with the number
      of tree edges between every two models of a tree (paper: 0.99);
    - path rho: Pearson correlation of the same distance with the one the tree's own edges predict for each pair
      (l2: independent moves add in quadrature, sqrt of the sum of squared edge distances along the path; rank:
      ranks add). High path rho with a lower Fig. 1 rho says the geometry is the paper's and edges differ in size;
      `additivity` is the median of distance / prediction (1: orthogonal moves, < 1: moves partly cancel);
    - rho ceiling: the Fig. 1 rho the tree would show if every distance were exactly its path prediction, i.e.
      what the spread of edge sizes alone allows (LoRA-V draws each edge's rank from {8, 16, 32, 64}, so its
      ceiling is ~0.7 by design, and the paper's 0.99 on a LoRA tree implies one rank, as in LoRA-F);
    - same-task attraction: the share of pairs of same-task models that are not parent and child and lie closer
      than the tree's median edge (and, for reference, the share for different-task pairs);
    - nearest model is parent/child: the share of models whose nearest model (same tree) is a tree neighbour;
    - kurtosis falls: the share of fine-tuning edges whose child has a lower direction score than its parent;
    - roots: validation accuracy on the pretraining mix, loss plateau (train-loss drop over the last 20% of the
      recorded curve: the target; the validation loss's drop over the same steps beside it, since under a cosine
      schedule the train loss keeps falling as the rate anneals), the closest two roots' distance vs the largest
      edge, and kurtosis along pretraining (of all 2-D weights, from the curve the loop recorded; and per layer of
      each direction-layer set from the shipped checkpoints: the q/k/v layers LoRA graphs read, the dense layers FT
      graphs read, the convolutions ResNet graphs read), beside each graph's `root_direction` / `direction_drop`:
      how much room the root leaves the direction signal.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.experiments import experiment
from analysis.finetunes import roots_cache
from analysis.graphs import read_graph, resolve_graph
from analysis.premises import DIRECTION_ROOM_NOTE, premise_measures
from analysis.recover import analyze, recovery_options
from analysis.report import knobs, run_experiment, save_figure, write_table
from common.io import jsonable, read_json, write_json
from common.seed import derive_seed

NAME = "calibration"
log = logging.getLogger("mother.analysis")
HEADS = ("head.", "fc.", "classifier.")
# The targets for a faithful miniature (acceptance lines): used for the pass/fail column only.
TARGETS = {"median_accuracy": 0.6, "longer_gain": 0.05, "rho": 0.9, "edge_spread": 10.0, "root_accuracy": 0.6,
           "plateau": 0.02, "root_separation": 3.0}


def flat_weights(path: Path) -> np.ndarray:
    """All non-head floating weights of a safetensors file as one float64 vector (sorted by tensor name)."""
    from safetensors.numpy import load_file

    state = load_file(str(path))
    keys = sorted(k for k, v in state.items() if not k.startswith(HEADS) and v.dtype.kind == "f")
    return np.concatenate([state[k].astype(np.float64).ravel() for k in keys])


def longer_runs(cfg: DictConfig, graph_dir: Path, graph: Mapping, n: int, factor: int) -> list[dict]:
    """Fine-tune `n` seeded-random nodes again from their parents with `factor`x the steps; cached in work_dir
    under the recipe and the parent's sha256 (a rebuilt root changes every parent below it)."""
    from safetensors.torch import load_file

    import data_gen.finetune as ft
    from analysis.finetunes import load_task_data
    from data_gen.graph import read_record, weights_path

    children = [c for _, c in graph["edges"]]
    if not children or n <= 0:
        return []
    rng = np.random.default_rng(derive_seed(cfg.seed, NAME, graph_dir.name))
    picked = [children[i] for i in sorted(rng.choice(len(children), size=min(n, len(children)), replace=False))]
    work = Path(cfg.analysis.work_dir) / NAME / graph_dir.name / f"x{factor}"
    out = []
    for node in picked:
        job = read_record(graph_dir, node)["job"]
        recipe = dict(job["recipe"])
        recipe["epochs"] = int(recipe.get("epochs", 1)) * factor
        if recipe.get("max_steps"):
            recipe["max_steps"] = int(recipe["max_steps"]) * factor
        parent_sha256 = graph["meta"][job["parent"]]["sha256"]
        stamp = work / f"{node}.json"
        cached = read_json(stamp) if stamp.is_file() else {}
        if (cached.get("recipe"), cached.get("parent_sha256")) == (recipe, parent_sha256):
            out.append(cached)
            continue
        arch = read_record(graph_dir, job["root"])["meta"]["arch"]
        task = load_task_data(cfg, job["task"], **job.get("data", {}))
        res = ft.finetune(arch=arch, init_state=load_file(weights_path(graph_dir, job["parent"])), task=task,
                          recipe=recipe, out_dir=work, node_id=node, num_threads=cfg.get("num_threads"),
                          progress=False, save_adapter=False)
        rec = {"node": node, "task": job["task"], "recipe": recipe, "parent_sha256": parent_sha256,
               "steps": res["steps"], "val_accuracy": res["val_accuracy"],
               "base_accuracy": graph["meta"][node]["val_accuracy"], "base_steps": graph["meta"][node].get("steps")}
        write_json(stamp, rec)
        out.append(rec)
    return out


def graph_measures(cfg: DictConfig, label: str, spec: Mapping, k: DictConfig) -> dict[str, Any]:
    """Every calibration measure of one graph."""
    graph_dir = resolve_graph(cfg, spec["graph"])
    graph = read_graph(graph_dir)
    wa = analyze(graph_dir, recovery_options(cfg, spec.get("recovery")))
    meta = graph["meta"]
    children = [n for n in graph["nodes"] if meta[n].get("parent") is not None]
    vecs = {n: flat_weights(graph_dir / "models" / f"{n}.safetensors") for n in graph["nodes"]}
    rel = [float(np.linalg.norm(vecs[c] - vecs[p]) / np.linalg.norm(vecs[p])) for p, c in graph["edges"]]
    accs = [meta[n]["val_accuracy"] for n in children if meta[n].get("val_accuracy") is not None]
    chance = [1.0 / meta[n]["num_classes"] for n in children if meta[n].get("num_classes")]
    premises = premise_measures(graph, wa)
    longer = longer_runs(cfg, graph_dir, graph, int(k.longer_nodes), int(k.longer_factor))
    return {"label": label, "graph": graph_dir.name, "n_models": len(graph["nodes"]),
            "median_accuracy": float(np.median(accs)) if accs else math.nan,
            "median_chance": float(np.median(chance)) if chance else math.nan,
            "edge_min": min(rel), "edge_median": float(np.median(rel)), "edge_max": max(rel),
            "edge_spread": max(rel) / min(rel), **premises,
            "longer": longer,
            "longer_gain": float(np.median([r["val_accuracy"] - r["base_accuracy"] for r in longer])) if longer
            else math.nan, "root_vectors": {r: vecs[r] for r in premises["per_tree"]}}


def val_loss_drop(curve: Mapping | None) -> float:
    """Relative drop of a root's validation loss over its last 20% of steps (the plateau measure; target < 2%);
    NaN without a recorded validation curve."""
    from data_gen.pretraining import plateau_drop

    return plateau_drop(curve, "val_loss") if curve and curve.get("val_loss") else math.nan


def root_measures(name: str, cache_dir: Path | None) -> dict[str, Any]:
    """A built-in root's record (cached, else shipped): accuracy, loss plateau and kurtosis along pretraining (from
    its curve when recorded), steps."""
    from data_gen.pretraining import plateau_drop
    from data_gen.roots import root_record

    rec = root_record(name, cache_dir=cache_dir)
    curve = rec.get("curve") or {}
    plateau = plateau_drop(curve) if curve.get("train_loss") else math.nan
    val_drop = val_loss_drop(curve)
    kurt = curve.get("kurtosis") or []  # mean excess kurtosis along pretraining (recorded by the resumable loop)
    return {"root": name, "arch": rec.get("arch"), "steps": rec.get("steps"), "val_accuracy": rec.get("val_accuracy"),
            "plateau_drop": plateau, "val_loss_drop": val_drop, "train_seconds": rec.get("train_seconds"),
            "kurtosis_first": kurt[0] if kurt else math.nan, "kurtosis_max": max(kurt) if kurt else math.nan,
            "kurtosis_last": kurt[-1] if kurt else math.nan}


def root_kurtosis(name: str, cache_dir: Path | None, sets: Mapping[str, list[str]]) -> dict[str, list]:
    """Kurtosis per layer (mean over the layers of each set of kinds) at each of a built-in root's checkpoints along
    pretraining: {"step": [...], set label: [...]}; a set with no layers in the root is left out."""
    from analysis.trajectories import series_stats
    from data_gen.roots import root_checkpoints

    pairs = root_checkpoints(name, cache_dir=cache_dir)
    files = [p for _, p in pairs]
    out: dict[str, list] = {"step": [int(s) for s, _ in pairs]}
    every_kind = list(dict.fromkeys(kind for kinds in sets.values() for kind in kinds))
    vals = series_stats(files, stats=["kurtosis"], kinds=every_kind, per_layer=True)["kurtosis"]   # one read a file
    for label, kinds in sets.items():
        per_file = [[v for kind in kinds for v in vals[kind][i]["per_layer"].values()] for i in range(len(files))]
        if all(per_file):
            out[label] = [float(np.mean(v)) for v in per_file]
    return out


def _num(x: Any) -> float:
    """None (a measure that does not apply) as NaN, for tables and plots."""
    return math.nan if x is None else float(x)


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    graphs = {label: graph_measures(cfg, label, OmegaConf.to_container(spec, resolve=True), k)
              for label, spec in k.graphs.items()}
    roots = [root_measures(r, roots_cache(cfg)) for r in k.roots]
    sets = OmegaConf.to_container(k.root_kurtosis, resolve=True) if k.get("root_kurtosis") else {}
    kurtosis = {r["root"]: root_kurtosis(r["root"], roots_cache(cfg), sets[r["arch"]]) for r in roots
                if r["arch"] in sets}
    # separation of the roots: closest two roots of one architecture vs the largest edge of that architecture's
    # graphs (a ResNet edge says nothing about how far apart two ViT roots must be)
    vectors: dict[str, np.ndarray] = {}
    largest_for: dict[tuple, float] = {}   # flat weight shape (the architecture) -> largest edge of its graphs
    for g in graphs.values():
        for name, vec in g.pop("root_vectors").items():
            vectors[name] = vec
            largest_for[vec.shape] = max(largest_for.get(vec.shape, 0.0), float(g["edge_max"]))
    if len(k.roots) > 1:
        from data_gen.roots import ensure_root
        for r in k.roots:
            vectors.setdefault(r, flat_weights(ensure_root(r, cache_dir=roots_cache(cfg))))
    names = [r for r in vectors if r in set(k.roots)]
    pairs = [(float(np.linalg.norm(vectors[a] - vectors[b]) / np.linalg.norm(vectors[a])),
              largest_for[vectors[a].shape]) for i, a in enumerate(names) for b in names[i + 1:]
             if vectors[a].shape == vectors[b].shape and vectors[a].shape in largest_for]
    closest, largest = min(pairs, key=lambda p: p[0] / p[1]) if pairs else (math.nan, math.nan)
    return jsonable({"graphs": graphs, "roots": roots, "root_kurtosis": kurtosis,
            "root_separation": {"closest_roots": closest, "largest_edge": largest, "ratio": closest / largest},
            "targets": TARGETS, "longer_factor": int(k.longer_factor)})


def _ok(value: float | None, target: float, higher: bool = True) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "yes" if (value >= target if higher else value <= target) else "no"


def accuracy_status(g: Mapping, t: Mapping) -> str:
    """Issue 14's fine-tune accuracy target: "yes" at >= 0.6, "converged" below it when the median accuracy is
    within `longer_gain` (0.05) of the 4x-longer runs', else "no"."""
    if _ok(g["median_accuracy"], t["median_accuracy"]) == "yes":
        return "yes"
    gain = g["longer_gain"]
    if gain is None or math.isnan(gain):
        return "no"
    return "converged" if abs(gain) <= t["longer_gain"] else "no"


def render(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    t = results["targets"]
    graphs = [{k: (_num(v) if k not in ("label", "graph", "metric", "per_tree", "longer") else v)
               for k, v in g.items()} for g in results["graphs"].values()]
    rows = [{"graph": g["label"], "models": int(g["n_models"]), "distance": g["metric"],
             "median val acc": g["median_accuracy"], "median chance": g["median_chance"],
             f"gain at {results['longer_factor']}x steps": g["longer_gain"],
             "edge size min": g["edge_min"], "edge size median": g["edge_median"], "edge size max": g["edge_max"],
             "max/min": g["edge_spread"], "Fig. 1 rho": g["rho"],
             "rho ceiling": g.get("rho_ceiling", math.nan), "path rho": g["rho_path"],
             "additivity": g["additivity"], "same-task closer": g["same_task_closer"],
             "other-task closer": g["other_task_closer"], "nearest is parent/child": g["nearest_is_neighbour"],
             "kurtosis falls": g["kurtosis_falls"], "root kurtosis/layer": g.get("root_direction", math.nan),
             "median fall/layer": g.get("direction_drop", math.nan),
             "in regime (acc, rho, spread)": "/".join([accuracy_status(g, t),
                                                      _ok(g["rho"], t["rho"]),
                                                      _ok(g["edge_spread"], t["edge_spread"], higher=False)])}
            for g in graphs]
    write_table(pd.DataFrame(rows), out_dir, NAME,
                caption=f"Calibration of the mini graphs (weights only); {DIRECTION_ROOM_NOTE}")
    if results["roots"]:
        roots = pd.DataFrame([{**r, "acc >= 0.6": _ok(_num(r["val_accuracy"]), t["root_accuracy"]),
                               "plateaued": _ok(_num(r["plateau_drop"]), t["plateau"], higher=False)}
                              for r in results["roots"]])
        write_table(roots, out_dir, f"{NAME}_roots",
                    caption="Built-in roots: accuracy on the pretraining mix, plateau (plateau_drop: train loss, "
                            "val_loss_drop: validation loss, relative drop over the last 20% of steps); kurtosis_*: "
                            "the training loop's mean excess kurtosis of the weights (0 for a Gaussian, unlike the "
                            "Pearson kurtosis of the tables above, 3 for a Gaussian) at the first, highest and last "
                            "evaluation")
    if results.get("root_kurtosis"):
        render_root_kurtosis(results["root_kurtosis"], out_dir)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    labels = [g["label"] for g in graphs]
    x = np.arange(len(graphs))
    axes[0].bar(x - 0.2, [g["median_accuracy"] for g in graphs], 0.4, label="median val acc")
    axes[0].bar(x + 0.2, [g["median_chance"] for g in graphs], 0.4, label="median chance")
    axes[0].axhline(t["median_accuracy"], color="k", ls="--", lw=1, label="target")
    axes[0].set_title("fine-tune accuracy")
    axes[1].bar(x, [g["rho"] for g in graphs])
    axes[1].axhline(t["rho"], color="k", ls="--", lw=1)
    axes[1].set_ylim(min(0.0, *[g["rho"] for g in graphs if not math.isnan(g["rho"])]), 1.0)
    axes[1].set_title("Fig. 1 rho (paper 0.99)")
    for i, g in enumerate(graphs):
        axes[2].plot([i, i], [g["edge_min"], g["edge_max"]], "k-")
        axes[2].plot(i, g["edge_median"], "ko")
    axes[2].set_yscale("log")
    axes[2].set_title("edge size ||dW||/||W|| (min, median, max)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)


def render_root_kurtosis(curves: Mapping[str, Mapping[str, list]], out_dir: Path) -> None:
    """calibration_root_kurtosis: a panel per layer set, a line per root (kurtosis per layer vs pretraining step),
    and a table of each root's first / highest / last value per set."""
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(label for c in curves.values() for label in c if label != "step"))
    if not sets:   # no root has a layer of any configured set
        return
    rows = []
    colors = {root: f"C{i}" for i, root in enumerate(curves)}   # one colour per root across the panels
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), layout="constrained", squeeze=False)
    for ax, label in zip(axes[0], sets):
        for root, c in curves.items():
            if label in c:
                ax.plot(c["step"], c[label], "o-", ms=3, label=root, color=colors[root])
                top = int(np.argmax(c[label]))
                rows.append({"root": root, "layers": label, "first": c[label][0], "highest": c[label][top],
                             "at step": c["step"][top], "last": c[label][-1], "steps": c["step"][-1]})
        ax.axhline(3.0, color="k", ls=":", lw=1, label="Gaussian (3)")
        ax.set_xscale("symlog", linthresh=500)
        ax.set_xlim(left=0)
        ax.set_title(f"{label}: kurtosis per layer along pretraining", fontsize=10)
        ax.set_xlabel("pretraining step")
    legend = {}   # every root once (a set may hold only some of them: the ResNet's convolutions)
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    save_figure(fig, out_dir, f"{NAME}_root_kurtosis")
    write_table(pd.DataFrame(rows), out_dir, f"{NAME}_root_kurtosis",
                caption="Built-in roots: kurtosis per layer of each direction-layer set along pretraining (shipped "
                        "checkpoints; 3 for a Gaussian)")


def describe(results: dict) -> dict:
    gs = [{k: (_num(v) if k != "label" and not isinstance(v, (str, dict, list)) else v) for k, v in g.items()}
          for g in results["graphs"].values()]
    ours = "; ".join(f"{g['label']}: median acc {g['median_accuracy']:.2f}, rho {g['rho']:.2f} (ceiling "
                     f"{_num(g.get('rho_ceiling')):.2f}, path rho {g['rho_path']:.2f}), edge spread "
                     f"{g['edge_spread']:.0f}x, same-task closer {g['same_task_closer']:.0%}, kurtosis falls on "
                     f"{g['kurtosis_falls']:.0%}" for g in gs)
    sep = results["root_separation"]
    notes = (f"Targets (issue 14): median fine-tune accuracy >= 0.6 (or within 0.05 of the 4x-longer runs: "
             f"'converged'), rho >= 0.9, edge spread <= 10x, roots >= 0.6 and "
             f"plateaued (< 2% loss drop over the last 20%), closest roots >= 3x the largest edge (now "
             f"{_num(sep['ratio']):.2f}x). At mini scale Fig. 1 is a calibration target, not evidence: the recipes are "
             f"chosen to reach it.")
    capped = [g for g in gs if _num(g.get("rho_ceiling")) < TARGETS["rho"]]
    if capped:
        notes += (" Below the rho target because the edges differ in size (rho ceiling: the rho if every distance "
                  "were exactly what its path's edges predict): " + "; ".join(
                      f"{g['label']} rho {g['rho']:.2f}, ceiling {g['rho_ceiling']:.2f} (largest / smallest edge "
                      f"in {g['metric']} {_num(g.get('edge_length_spread')):.1f}x, path rho {g['rho_path']:.2f})"
                      for g in capped) + ".")
    return {"title": "Calibration: are the mini graphs in the paper's regime?", "ours": ours, "notes": notes,
            "paper": "ViT-B fine-tunes: Fig. 1 rho 0.99, kurtosis falls along fine-tuning (Fig. 2)"}


@experiment(NAME, order=0)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
