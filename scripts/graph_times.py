"""Measured training cost of built model graphs, from their node records (nodes/<id>.json).

    python scripts/graph_times.py                      # every graph folder under graphs/ ($MOTHER_GRAPHS_DIR)
    python scripts/graph_times.py graphs/ft_mini graphs/deep_mini [--out FILE.md]

One row per graph and fine-tuning method: nodes trained, optimizer steps, step time (mean of a node's steps after
its first; median over nodes), node time (median and sum: fine-tune plus set-up and saving), and the device and
torch threads they ran with. A build's wall time is about the summed node time over the workers that ran side by
side. A node's time is wall time: a build paused (SIGSTOP) or sharing its cores with other work counts that too;
the medians are what to quote.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.io import read_json, write_text  # noqa: E402


def node_records(graph_dir: Path) -> list[dict]:
    """The `meta` of every fine-tuned node of a graph folder (roots, which are copied, left out)."""
    folder = graph_dir / "nodes"
    if not folder.is_dir():
        raise FileNotFoundError(f"{graph_dir}: no nodes/ folder (not a graph folder built by data_gen)")
    metas = []
    for path in sorted(folder.glob("*.json")):
        record = read_json(path)   # names the file when it is malformed
        if not isinstance(record, dict) or "meta" not in record:
            raise ValueError(f"{path}: not a node record (no 'meta')")
        meta = record["meta"]
        if meta.get("parent") is not None:
            metas.append(meta)
    return metas


def graph_rows(graph_dir: Path) -> list[dict]:
    """Per fine-tuning method of one graph: counts, median step / node seconds, summed node seconds."""
    by_method: dict[str, list[dict]] = {}
    for meta in node_records(graph_dir):
        by_method.setdefault(str(meta.get("method")), []).append(meta)
    rows = []
    for method, metas in sorted(by_method.items()):
        steps = [m["steps"] for m in metas if m.get("steps") is not None]
        step_s = [m["step_seconds"] for m in metas if m.get("step_seconds") is not None]
        node_s = [m["seconds"] for m in metas if m.get("seconds") is not None]
        devices = sorted({f"{m.get('accelerator') or 'cpu'} x{m.get('num_threads')} threads" for m in metas})
        rows.append({"graph": graph_dir.name, "method": method, "nodes": len(metas),
                     "steps (median)": statistics.median(steps) if steps else None,
                     "step s (median)": statistics.median(step_s) if step_s else None,
                     "node s (median)": statistics.median(node_s) if node_s else None,
                     "node s (sum)": sum(node_s), "device": ", ".join(devices)})
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (floats to 3 significant digits)."""
    if not rows:
        return "no fine-tuned nodes found\n"
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) and v < 100 else
                                           f"{v:.0f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="*", type=Path, help="graph folders (default: every one under graphs/)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    folders = args.graphs
    if not folders:
        base = Path(os.environ.get("MOTHER_GRAPHS_DIR", ROOT / "graphs"))
        folders = sorted(p for p in base.glob("*") if (p / "nodes").is_dir())
        if not folders:
            print(f"no graph folders under {base}", file=sys.stderr)
            return 1
    try:
        rows = [row for folder in folders for row in graph_rows(folder)]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(rows)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
