"""Gather a finished multirun sweep into one table (CSV + Markdown + LaTeX) and print it.

    python scripts/slurm/collect_sweep.py logs/recover/multiruns/2026-01-01_12-00-00 --results metrics.json
    python scripts/slurm/collect_sweep.py SWEEP --results 'results/*/results.json' --over seed

Writes <out>/<name>.{csv,md,tex} (default: into the sweep folder, name "sweep"), plus <name>_summary.* with
mean/std over the repeats of `--over` when that override was swept. Exits 1 when some job has no results.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.report import markdown_table, write_table
from analysis.sweep import collect_sweep, summarize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    p.add_argument("--results", default="metrics.json", help="results JSON of each job, relative to its folder (glob ok)")
    p.add_argument("--fields", default=None, help="comma-separated dotted result keys to keep (default: all scalars)")
    p.add_argument("--over", default=None, help="override holding the repeats (e.g. seed): also write mean/std over it")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the sweep folder)")
    p.add_argument("--name", default="sweep", help="table file name stem")
    args = p.parse_args(argv)

    fields = args.fields.split(",") if args.fields else None
    df = collect_sweep(args.sweep_dir, args.results, fields=fields)
    out = args.out or args.sweep_dir
    caption = f"Sweep {args.sweep_dir.name}: {len(df)} jobs, results from {args.results}"
    write_table(df, out, args.name, caption=caption)
    print(markdown_table(df))
    if args.over:
        summary = summarize(df, over=args.over)
        write_table(summary, out, f"{args.name}_summary", caption=f"{caption}; mean ± std over {args.over}")
        print(markdown_table(summary))
    missing = df.loc[df["status"] != "ok", "job"].tolist()
    print(f"wrote {out}/{args.name}.{{csv,md,tex}}" + (f"; jobs without results: {missing}" if missing else ""),
          file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
