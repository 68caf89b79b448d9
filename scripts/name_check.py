"""Does recovery depend on the models' names? Recover a graph folder as it is and with its models renamed.

    python scripts/name_check.py GRAPH_DIR [recovery.OPTION=VALUE ...]
    python scripts/name_check.py graphs/mixed_mini recovery=paper recovery.distance.metric=l2 \
        recovery.direction.ties=none

data_gen names a child after its parent (`vit_a1-0-2`), so the order of the files follows the tree. Recovery reads
the weights only, yet where two models cannot be told apart (equal direction scores: see recovery/ties.py) an
algorithm's arbitrary choice follows that order. This script links every model file into a temporary folder under
a hashed name (`m` + 10 hex digits of sha1(id): an order unrelated to the tree), recovers both folders with the
same options (`python run.py +experiment=recover ...`, every model a specialization model, the paper's protocol),
and prints, for each, the directed and undirected edge accuracy and how many true edges join models with equal
direction scores ("tied") and how many of those it placed right. Equal lines: the names play no part.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.io import read_json, write_json  # noqa: E402
from recovery.evaluate import load_graph  # noqa: E402


def hashed(mid: str) -> str:
    """The renamed id of model `mid`."""
    return "m" + hashlib.sha1(mid.encode()).hexdigest()[:10]


def link_folder(graph_dir: Path, out: Path, rename: bool) -> dict[str, str]:
    """Link graph_dir/models/*.safetensors into `out` (renamed or not); return {graph id: id in `out`}."""
    out.mkdir(parents=True)
    names = {}
    for f in sorted((graph_dir / "models").glob("*.safetensors")):
        names[f.stem] = hashed(f.stem) if rename else f.stem
        os.symlink(f.resolve(), out / f"{names[f.stem]}.safetensors")
    return names


def tied_edges(tree: dict, truth: list[tuple[str, str]]) -> dict:
    """How many true edges join models with equal direction scores (per layer), and how many of those were placed
    right; the accuracies come from recovery's own evaluation (metrics.json)."""
    got = {(e["parent"], e["child"]) for e in tree["edges"]}
    per_layer = {n["id"]: tuple(n["direction_per_layer"]) for n in tree["nodes"]}
    tied = [e for e in truth if per_layer.get(e[0]) == per_layer.get(e[1])]
    return {"tied": len(tied), "tied_right": sum(e in got for e in tied)}


def recover(folder: Path, out: Path, stages: Path, truth: Path, options: list[str]) -> tuple[dict, dict]:
    """`python run.py +experiment=recover` on `folder`, scored against `truth`; its tree.json and metrics.json."""
    cmd = [sys.executable, str(ROOT / "run.py"), "+experiment=recover", f"input={folder}", f"output_dir={out}",
           f"stages_file={stages}", f"ground_truth={truth}", "recovery.plot=false", *options]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"recovery failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return read_json(out / "tree.json"), read_json(out / "metrics.json")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph_dir", type=Path, help="a graph folder written by data_gen (graph.json + models/)")
    ap.add_argument("options", nargs="*", help="recovery overrides, as on the command line")
    args = ap.parse_args(argv)
    graph = load_graph(args.graph_dir / "graph.json")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mother-names-") as tmp:
        stages, truth_file = Path(tmp) / "stages.json", Path(tmp) / "truth.json"
        for rename in (False, True):
            label = "hashed names" if rename else "graph names"
            names = link_folder(args.graph_dir, Path(tmp) / label.replace(" ", "_"), rename)
            truth = [(names[p], names[c]) for p, c in graph.edges]
            write_json(stages, {names[n]: "specialization" for n in names})
            write_json(truth_file, {"nodes": [names[n] for n in graph.nodes], "edges": [list(e) for e in truth]})
            tree, metrics = recover(Path(tmp) / label.replace(" ", "_"), Path(tmp) / f"out_{rename}", stages,
                                    truth_file, args.options)
            row = {"names": label, "directed": metrics["edge_accuracy"],
                   "undirected": metrics["undirected_accuracy"], **tied_edges(tree, truth)}
            rows.append(row)
            print(f"{label:>12}: directed {row['directed']:.3f}, undirected {row['undirected']:.3f}; "
                  f"{row['tied']} true edges tied, {row['tied_right']} of them right")
    print(json.dumps({"graph": str(args.graph_dir), "options": args.options, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
