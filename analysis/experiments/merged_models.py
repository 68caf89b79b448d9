"""Table 6 (Appendix E): models with mixed heritage — uniform weight soups of two roots, then fine-tuned.

Three built-in roots A, B, C of one architecture; each pair is merged by uniform weight averaging (a model soup).
From each of the 6 parents (3 originals, 3 soups) `children` models are fine-tuned (tasks cycled from `tasks`,
seeds derived from (seed, experiment, parent, index)). Then:
1. Clustering: the children are clustered into 6 trees on the l2 distance (recovery.cluster with cfg.recovery's
   options and this experiment's `recovery` overrides, K given as in the paper) and scored against their true parents (Hungarian matching).
2. Parent detection: each original root's cluster centre is the mean weights of its children; for each child of
   a soup, the cosine similarity to the three centres. The cosine is on the concatenated, flattened weights of
   the layers recovery compares (cfg.recovery.layers: all 2-D tensors, heads left out), either "raw" (the weights
   themselves, the paper's wording) or "centered" (minus the mean of all children of all 6 parents: deltas from a
   common reference); both are reported, `vectors` picks the one in the headline. A soup's parents are the
   two centres with the highest cosine.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis import report
from analysis.cosines import VECTORS, cosine_to_centres, soup, top_k_parents
from analysis.finetunes import analysis_cache, finetune_run, load_root_state, node_name, save_state
from analysis.graphs import graph_folder
from common.io import jsonable
from common.paths import portable
from common.seed import derive_seed

NAME = "merged_models"


def parents(cfg: DictConfig, k, cache: Path) -> dict[str, dict]:
    """The 3 originals and 3 soups: name -> {"root": spec, "init": (arch, state) loader, "of": [originals]}."""
    if len(k.roots) != 3:
        raise ValueError(f"analysis.{NAME}.roots must name exactly 3 roots, got {list(k.roots)}")
    originals = {node_name(r): str(r) for r in k.roots}
    out = {name: {"root": root, "init": None, "of": [name]} for name, root in originals.items()}
    for a, b in itertools.combinations(originals, 2):
        name = f"soup_{a}+{b}"
        path = cache / "roots" / f"{name}.safetensors"
        if not path.is_file():
            (arch_a, sa), (arch_b, sb) = load_root_state(cfg, originals[a]), load_root_state(cfg, originals[b])
            if arch_a != arch_b:
                raise ValueError(f"cannot merge {originals[a]} ({arch_a}) with {originals[b]} ({arch_b}): "
                                 "a soup needs one architecture")
            merged, _ = soup([sa, sb])
            save_state(path, merged, arch_a)
        out[name] = {"root": f"{originals[a]}+{originals[b]}", "init": path, "of": sorted([a, b])}
    return out


def build(cfg: DictConfig, k) -> tuple[Path, dict[str, dict], dict[str, str]]:
    """Fine-tune (cached) every child; return the graph folder, the parents and child -> parent."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    cache = analysis_cache(cfg, str(k.cache))
    ps = parents(cfg, k, cache)
    models, edges, meta, parent_of = {}, [], {}, {}
    for name, p in ps.items():
        init = None
        if p["init"] is not None:
            with safe_open(str(p["init"]), framework="pt") as f:
                arch = f.metadata()["arch"]
            init = (arch, load_file(p["init"]))
        for i in range(int(k.children)):
            task = str(k.tasks[i % len(k.tasks)])
            recipe = {**jsonable(k.recipe), "seed": derive_seed(cfg.seed, NAME, name, i)}
            run = finetune_run(cfg, cache, root=p["root"], task=task, recipe=recipe, image_size=int(k.image_size),
                               data_seed=derive_seed(cfg.seed, "data", task), checkpoint_every=None,
                               init=init, init_name=name)
            child = f"{name}-c{i}"
            models[name] = run["init_file"]
            models[child] = run["weights"]
            edges.append((name, child))
            parent_of[child] = name
            meta[child] = {"task": task, "seed": recipe["seed"], "val_accuracy": run["val_accuracy"]}
    digest = hashlib.sha256(json.dumps(sorted(models.items())).encode()).hexdigest()[:8]
    return graph_folder(cache / "sets" / digest, models, edges, meta), ps, parent_of


def compute(cfg: DictConfig) -> dict:
    """Clustering of the children into 6, cosine of each soup child to the originals' centres, parent calls."""
    from analysis.recover import analyze, recovery_options
    from recovery.cluster import cluster_trees
    from recovery.evaluate import clustering_accuracy

    k = report.knobs(cfg, NAME)
    folder, ps, parent_of = build(cfg, k)
    options = recovery_options(cfg, k.get("recovery"))
    children = sorted(parent_of)
    # the children alone (their parents are not in the set): a folder of only them
    kids = graph_folder(folder.parent / f"{folder.name}_children",
                        {c: folder / "models" / f"{c}.safetensors" for c in children}, [])
    wa = analyze(kids / "models", options)
    clustering = cluster_trees(wa.l2, **{**options["cluster"], "n_trees": len(ps)})
    clus = clustering_accuracy(wa.ids, clustering.labels.tolist(), {c: parent_of[c] for c in wa.ids})
    originals = [n for n, p in ps.items() if p["of"] == [n]]
    soups = [n for n in ps if n not in originals]
    files = {c: kids / "models" / f"{c}.safetensors" for c in wa.ids}
    groups = {c: parent_of[c] for c in wa.ids if parent_of[c] in originals}
    queries = [c for c in wa.ids if parent_of[c] in soups]
    layer_names = sorted({name.split("[")[0] for name in wa.layers})  # fused qkv parts -> the whole tensor
    cos = {v: cosine_to_centres(files, groups, queries, layer_names, vectors=v) for v in VECTORS}
    tables = {}
    for v in VECTORS:
        rows = []
        for s in soups:
            mine = [q for q in queries if parent_of[q] == s]
            mean = {o: float(np.mean([cos[v][q][o] for q in mine])) for o in originals}
            calls = [top_k_parents(cos[v][q], 2) for q in mine]
            rows.append({"merged": s, "true_parents": ps[s]["of"], "mean_cosine": mean,
                         "identified": top_k_parents(mean, 2),
                         "children_right": sum(c == ps[s]["of"] for c in calls), "children": len(mine)})
        right = sum(r["children_right"] for r in rows)
        tables[v] = {"rows": rows, "parent_accuracy": right / max(1, sum(r["children"] for r in rows))}
    return {"originals": originals, "soups": soups, "children_per_parent": int(k.children),
            "clustering_accuracy": clus["clustering_accuracy"], "n_clusters": int(clustering.n_clusters),
            "cosine_layers": len(layer_names), "vectors": str(k.vectors), "tables": tables,
            "cosines": cos, "folder": portable(folder), "tasks": [str(t) for t in k.tasks], "recipe": jsonable(k.recipe)}


def render(results: dict, out_dir: Path) -> None:
    """merged_models.md/.tex/.csv (Table 6, headline vectors), merged_models_<other vectors> tables, and a heat map
    of the mean cosines per kind of vector (true parents boxed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    for v in VECTORS:
        t = results["tables"][v]
        df = pd.DataFrame([{"merged": r["merged"], **{o: r["mean_cosine"][o] for o in results["originals"]},
                            "identified parents": " + ".join(r["identified"]),
                            "true parents": " + ".join(r["true_parents"]),
                            "children right": f"{r['children_right']}/{r['children']}"} for r in t["rows"]])
        name = NAME if v == results["vectors"] else f"{NAME}_{v}"
        what = ("raw weights" if v == "raw" else "weights minus the mean of all children (deltas from a common "
                                                 "reference)")
        report.write_table(df, out_dir, name,
                           caption=f"Table 6: mean cosine similarity ({what}) of each merged root's children to the "
                                   f"centre of each original root's children; parents = top-2 cosines; child-level "
                                   f"parent accuracy {t['parent_accuracy']:.2f}; clustering of all children into "
                                   f"{results['n_clusters']} trees: accuracy {results['clustering_accuracy']:.2f}")
    originals = results["originals"]
    fig, axes = plt.subplots(1, len(VECTORS), figsize=(4.6 * len(VECTORS), 3.6), layout="constrained", squeeze=False)
    for ax, v in zip(axes[0], VECTORS):
        rows = results["tables"][v]["rows"]
        grid = np.array([[r["mean_cosine"][o] for o in originals] for r in rows])
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
        for i, r in enumerate(rows):
            for j, o in enumerate(originals):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
                if o in r["true_parents"]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="k", linewidth=2))
        ax.set_xticks(range(len(originals)), originals, fontsize=8)
        ax.set_yticks(range(len(rows)), [r["merged"] for r in rows], fontsize=8)
        ax.set_xlabel("original root (its children's centre)")
        ax.set_title(f"{v}: parent accuracy {results['tables'][v]['parent_accuracy']:.2f}", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean cosine of the merged root's children")
    report.save_figure(fig, out_dir, NAME)


def describe(results: dict) -> dict[str, str]:
    """Title, the paper's claim, ours, and how they compare."""
    t = results["tables"][results["vectors"]]
    other = [v for v in VECTORS if v != results["vectors"]][0]
    ours = (f"clustering accuracy {results['clustering_accuracy']:.2f}; parents identified for "
            f"{t['parent_accuracy']:.0%} of merged children by top-2 cosine on {results['vectors']} weights "
            f"({results['tables'][other]['parent_accuracy']:.0%} on {other})")
    perfect = results["clustering_accuracy"] == 1.0 and t["parent_accuracy"] == 1.0
    notes = ("Built-in tiny roots and tasks. " + ("As in the paper, clustering and parent identification are "
             "perfect." if perfect else "Unlike the paper, clustering or parent identification is not perfect."))
    return {"title": "Table 6: models with mixed heritage (merged roots)",
            "paper": "clustering of 30 models into 6 perfect; parents of all merged models identified "
                     "(e.g. IN+DINO: 0.976 / 0.192 / -0.001)", "ours": ours, "notes": notes}


@experiment(NAME, order=150)
def run(cfg: DictConfig) -> dict:
    """compute -> results.json -> render -> experiment.json."""
    return report.run_experiment(cfg, NAME, compute, render, describe)
