"""Beyond the paper: direction cues, tree-consistent orientation, automatic stage and family geometry, each alone
and combined, against the paper's method, on every built-in graph kind.

Protocol. Each graph is recovered per known tree (`cluster.n_trees: truth`, the paper's Table 1 protocol), so
the table measures structure and direction only. Two stage settings: `none` (no stage given: every model
counts as specialization, as for a folder of downloaded checkpoints) and `given` (graph.json's stages). The
method is chosen on the development graphs (other data_gen seeds, smaller) by mean edge accuracy with no stage
given, and reported on the evaluation graphs (Table 1's graphs and the others), which play no part in the
choice. The pretraining chains (roots' checkpoints, a generalization stage) test the automatic stage.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.recover import analyze, forest, recovery_options
from analysis.report import knobs as get_knobs, run_experiment, save_figure, write_table

NAME = "recovery_ablation"
BASELINE = "paper"


def compute(cfg: DictConfig) -> dict:
    """One weight analysis per graph (cues on); every variant x stage setting recovered from it."""
    from analysis.graphs import resolve_graph
    from recovery.evaluate import load_graph

    k = get_knobs(cfg, NAME)
    variants = OmegaConf.to_container(k.variants, resolve=True)
    rows, missing = [], []
    for split in ("dev", "eval"):
        for label, sub in (k.get(split) or {}).items():
            graph_dir = resolve_graph(cfg, sub.graph)
            opts = recovery_options(cfg, sub.get("recovery"))
            opts["direction"] = {**opts["direction"], "cues": True}
            wa = analyze(graph_dir, opts)
            truth = load_graph(graph_dir / "graph.json")
            for stages in k.stages:
                w = wa if stages == "given" else dataclasses.replace(wa, stages=dict.fromkeys(wa.ids, "specialization"))
                for name, tree in variants.items():
                    res = forest(w, truth, cluster=dict(k.cluster), tree={**opts["tree"], **tree})
                    m = res["metrics"]
                    rows.append({"split": split, "graph": label, "stages": stages, "variant": name,
                                 "edge_accuracy": m["edge_accuracy"], "undirected_accuracy": m["undirected_accuracy"],
                                 "n_edges": m["n_edges_true"], "n_models": len(wa.ids)})
            if split == "eval" and k.get("missing"):
                missing += missing_parent_trials(wa, truth, label, dict(k.missing), {**opts["tree"],
                                                 **variants[str(k.missing.variant)]})
    chosen = choose(rows, str(k.select_stages))
    return {"rows": rows, "chosen": chosen, "variants": variants, "select_stages": str(k.select_stages),
            "missing": missing}


def subset(wa, keep: list[str]):
    """The WeightAnalysis restricted to the models `keep` (as if the others were not in the folder)."""
    idx = [wa.ids.index(i) for i in keep]
    sq = np.ix_(idx, idx)
    return dataclasses.replace(
        wa, ids=list(keep), stages={i: wa.stages[i] for i in keep}, distance=wa.distance[sq], l2=wa.l2[sq],
        sq_l2=wa.sq_l2[sq], direction=wa.direction[idx], direction_per_layer=wa.direction_per_layer[idx],
        cues={k: v[idx] for k, v in wa.cues.items()})


def missing_parent_trials(wa, truth, label: str, knobs: dict, tree: dict) -> list[dict]:
    """Drop one internal model at a time (up to knobs["per_graph"], first in id order) and check that the
    missing-parent report names its children; also count the groups reported on the intact graph (false alarms)."""
    from recovery.evaluate import Graph

    tree = {**tree, "missing": True}
    parent = {c: p for p, c in truth.edges}
    kids: dict[str, list[str]] = {}
    for p, c in truth.edges:
        kids.setdefault(p, []).append(c)
    intact = forest(wa, truth, cluster={"n_trees": "truth"}, tree=tree)["missing"]
    out = [{"graph": label, "dropped": None, "children": 0, "found": None,
            "false_groups": len(intact), "n_models": len(wa.ids)}]
    internal = sorted(n for n in kids if n in parent and len(kids[n]) >= 2)[: int(knobs["per_graph"])]
    for m in internal:
        keep = [i for i in wa.ids if i != m]
        edges = [(parent[m], c) if p == m else (p, c) for p, c in truth.edges if c != m]
        sub = subset(wa, keep)
        groups = forest(sub, Graph(nodes=keep, edges=edges), cluster={"n_trees": "truth"}, tree=tree)["missing"]
        found = any(set(g["models"]) >= set(kids[m]) and len(set(g["models"]) - set(kids[m])) == 0
                    for g in groups)
        out.append({"graph": label, "dropped": m, "children": len(kids[m]), "found": bool(found),
                    "false_groups": sum(1 for g in groups if not set(g["models"]) <= set(kids[m])),
                    "n_models": len(keep)})
    return out


def choose(rows: list[dict], stages: str) -> str:
    """The variant with the best mean dev edge accuracy (stage setting `stages`); ties go to the earlier one."""
    dev = [r for r in rows if r["split"] == "dev" and r["stages"] == stages]
    if not dev:
        return BASELINE
    order = list(dict.fromkeys(r["variant"] for r in dev))
    means = {v: np.mean([r["edge_accuracy"] for r in dev if r["variant"] == v]) for v in order}
    return max(order, key=lambda v: (round(means[v], 9), -order.index(v)))


def _pivot(rows: list[dict], split: str, stages: str) -> pd.DataFrame:
    df = pd.DataFrame([r for r in rows if r["split"] == split and r["stages"] == stages])
    if df.empty:
        return df
    order = list(dict.fromkeys(df["variant"]))
    wide = df.pivot(index="variant", columns="graph", values="edge_accuracy").reindex(order)
    wide = wide[list(dict.fromkeys(df["graph"]))]
    wide["mean"] = wide.mean(axis=1)
    return wide.reset_index()


def render(results: dict, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, chosen = results["rows"], results["chosen"]
    stage_settings = list(dict.fromkeys(r["stages"] for r in rows))
    for split in ("eval", "dev"):
        for stages in stage_settings:
            wide = _pivot(rows, split, stages)
            if not wide.empty:
                write_table(wide, out_dir, f"{NAME}_{split}_{stages}",
                            caption=f"Edge accuracy per {split} graph (known trees; stages {stages}); "
                                    f"chosen on dev: {chosen}")
    if results.get("missing"):
        mp = pd.DataFrame(results["missing"])
        trials = mp[mp["dropped"].notna()]
        summary = (trials.groupby("graph", sort=False)
                   .agg(dropped=("dropped", "count"), children_reported=("found", "mean"),
                        false_groups=("false_groups", "mean")).reset_index())
        intact = mp[mp["dropped"].isna()].set_index("graph")["false_groups"]
        summary["groups_on_intact_graph"] = summary["graph"].map(intact)
        write_table(summary, out_dir, f"{NAME}_missing_parents",
                    caption="Missing parents: one internal model dropped at a time; share of trials whose "
                            "children were reported as one group, other groups reported (mean), and groups "
                            "reported on the intact graph")
    fig, axes = plt.subplots(1, len(stage_settings), figsize=(6.5 * len(stage_settings), 4.8), squeeze=False)
    for ax, stages in zip(axes[0], stage_settings):
        wide = _pivot(rows, "eval", stages)
        if wide.empty:
            continue
        graphs = [c for c in wide.columns if c not in ("variant", "mean")]
        im = ax.imshow(wide[graphs].to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(graphs)), graphs, rotation=30, ha="right")
        ax.set_yticks(range(len(wide)), [v + (" (chosen)" if v == chosen else "") for v in wide["variant"]])
        for (i, j), val in np.ndenumerate(wide[graphs].to_numpy(dtype=float)):
            ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if val < 0.6 else "black")
        ax.set_title(f"evaluation graphs, stages {stages}")
    fig.colorbar(im, ax=axes[0].tolist(), label="edge accuracy (known trees)")
    save_figure(fig, out_dir, NAME)
    plt.close(fig)


def describe(results: dict) -> dict:
    rows, chosen = results["rows"], results["chosen"]
    stages = results["select_stages"]
    ev = [r for r in rows if r["split"] == "eval" and r["stages"] == stages]

    def acc(variant: str) -> dict[str, float]:
        return {r["graph"]: r["edge_accuracy"] for r in ev if r["variant"] == variant}

    base, best = acc(BASELINE), acc(chosen)
    mp = [r for r in results.get("missing", []) if r["dropped"] is not None]
    found = f"; missing parents: children reported in {sum(r['found'] for r in mp)}/{len(mp)} trials" if mp else ""
    per = ", ".join(f"{g} {base[g]:.3f} -> {best[g]:.3f}" for g in best if g in base)
    worse = [g for g in best if g in base and best[g] < base[g] - 1e-9]
    notes = (f"Chosen on the development graphs (stages {stages}): {chosen}. "
             + (f"It loses to the paper's method on {', '.join(worse)}." if worse
                else "It loses to the paper's method on no evaluation graph."))
    return {"title": "Beyond the paper: direction cues, tree-consistent orientation, automatic stage, geometry",
            "paper": "the paper's method (kurtosis-penalised MDST, given stages): FT 0.94, Mixed 0.83, deep 0.79",
            "ours": f"evaluation graphs, paper -> {chosen}: {per}{found}", "notes": notes}


def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
