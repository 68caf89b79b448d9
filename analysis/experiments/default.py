"""The embedded default's report (`python run.py`): build or reuse the configured graph (cfg.data_gen, by
default conf/data_gen/default.yaml: built-in roots and tasks), recover it with the configured recovery options,
print the accuracy table and write it with the tree picture into results/default/."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from analysis.experiments import experiment
from analysis.graphs import resolve_graph, reusable
from analysis.recover import recover_graph
from analysis.report import knobs, run_experiment, write_table
from common.io import atomic_write
from common.paths import from_portable, portable

NAME = "default"


def configured_graph(cfg: DictConfig) -> Path:
    """The graph of cfg.data_gen, built (or finished) by data_gen when not complete."""
    if "data_gen" not in cfg:
        raise ValueError(f"{NAME}: no graph given: set analysis.default.graph or compose a data_gen config")
    if not reusable(cfg):
        from data_gen.graph import build_graph

        build_graph(cfg)
    return Path(cfg.data_gen.dir)


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    graph_dir = resolve_graph(cfg, k.graph) if k.get("graph") else configured_graph(cfg)
    out = recover_graph(cfg, graph_dir, k.get("recovery"), plot=True)
    m, tree = out["metrics"], out["tree"]
    trees = [{"tree (true root)": root, "models": t["n_nodes"], "edges": t["n_edges"], "correct": t["n_correct"],
              "accuracy": t["accuracy"]} for root, t in m["per_tree"].items()]
    return {"graph": graph_dir.name, "graph_dir": portable(graph_dir), "work_dir": out["work_dir"],
            "n_models": len(tree["nodes"]), "distance_metric": tree.get("distance_metric"),
            "edge_accuracy": m["edge_accuracy"], "undirected_accuracy": m["undirected_accuracy"],
            "clustering_accuracy": m["clustering_accuracy"], "n_trees_true": m["n_trees_true"],
            "n_trees_pred": m["n_trees_pred"], "trees": trees,
            "orientation": out["options"]["tree"].get("orient", "edges")}


def render(results: dict, out_dir: Path) -> None:
    frame = pd.DataFrame(results["trees"] + [{"tree (true root)": "Model Graph", "models": results["n_models"],
                                             "edges": sum(t["edges"] for t in results["trees"]),
                                             "correct": sum(t["correct"] for t in results["trees"]),
                                             "accuracy": results["edge_accuracy"]}])
    paths = write_table(frame, out_dir, NAME, caption=f"MoTHer on {results['graph']} ({results['n_models']} "
                        f"models, distance {results['distance_metric']}): edge accuracy per true tree; clustering "
                        f"accuracy {results['clustering_accuracy']:.3f} ({results['n_trees_pred']} trees found, "
                        f"{results['n_trees_true']} true)")
    print(paths["md"].read_text())
    picture = from_portable(results["work_dir"]) / "tree.png"
    if picture.is_file():
        atomic_write(Path(out_dir) / "tree.png", lambda tmp: shutil.copyfile(picture, tmp))


def describe(results: dict) -> dict:
    return {"title": "Embedded default: MoTHer on the default graph", "paper": "(no paper counterpart)",
            "ours": f"edge accuracy {results['edge_accuracy']:.3f}, clustering {results['clustering_accuracy']:.3f} "
                    f"on {results['n_models']} models ({results['graph']})",
            "notes": ("Recovered with the configured recovery (conf/config.yaml: recovery=recommended, tree-consistent "
                      "orientation; `python run.py recovery=paper` gives the paper's method). "
                      if results.get("orientation") == "root" else "Recovered with the paper's method. ")
                     + "The tree picture marks right, wrong and missed edges."}


@experiment(NAME, order=200, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)
