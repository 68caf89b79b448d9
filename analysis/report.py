"""Writing results: tables (CSV + Markdown + LaTeX), figures (PNG), experiment records, results/README.md.

Every experiment writes into its own folder `results/<experiment>/`; `experiment.json` there says what the
experiment is, the scale it ran at, the command that regenerates it and the paper's number beside ours.
`build_results_readme` turns all of them into `results/README.md`.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
from omegaconf import DictConfig

from common.io import atomic_write, read_json, write_json, write_text

RECORD = "experiment.json"
RESULTS = "results.json"
SCALES = ("toy", "mini", "paper")
log = logging.getLogger("mother.analysis")


# ----------------------------------------------------------------------------------------------- cells
def format_cell(value: Any, float_fmt: str = "{:.3f}") -> str:
    """One table cell as text: floats through `float_fmt`, NaN/None as 'n/a', everything else str()."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else float_fmt.format(value)
    return str(value)


def mean_std(values: Iterable[float], fmt: str = "{:.3f}") -> str:
    """'mean ± std' (population std, as numpy's default) of `values`."""
    vals = [float(v) for v in values]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "±": r"$\pm$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _cells(df: pd.DataFrame, float_fmt: str) -> tuple[list[str], list[list[str]]]:
    header = [str(c) for c in df.columns]
    rows = [[format_cell(v, float_fmt) for v in row] for row in df.itertuples(index=False, name=None)]
    return header, rows


def markdown_table(df: pd.DataFrame, float_fmt: str = "{:.3f}") -> str:
    """A GitHub Markdown table of `df` (index not shown: make it a column if it matters)."""
    header, rows = _cells(df, float_fmt)
    esc = lambda s: s.replace("|", r"\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def latex_table(df: pd.DataFrame, caption: str, label: str, float_fmt: str = "{:.3f}") -> str:
    """A booktabs LaTeX table of `df` with `caption` and `label`."""
    header, rows = _cells(df, float_fmt)
    cols = "l" + "c" * (len(header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_latex_escape(caption)}}}",
             f"\\label{{tab:{label}}}", f"\\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(map(_latex_escape, header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(_latex_escape, r)) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- writers
def write_table(df: pd.DataFrame, out_dir: Path, name: str, *, caption: str,
                float_fmt: str = "{:.3f}") -> dict[str, Path]:
    """Write `df` as out_dir/<name>.csv (full precision), <name>.md and <name>.tex (formatted), atomically.

    The Markdown file starts with the caption in italics so it reads on its own.
    """
    if df.columns.empty:
        raise ValueError(f"table {name!r} has no columns")
    out_dir = Path(out_dir)
    csv = atomic_write(out_dir / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))
    md = write_text(out_dir / f"{name}.md", f"*{caption}*\n\n" + markdown_table(df, float_fmt))
    tex = write_text(out_dir / f"{name}.tex", latex_table(df, caption, name, float_fmt))
    return {"csv": csv, "md": md, "tex": tex}


def plain_ticks(fig: Any) -> None:
    """Plain tick labels on every linear axis of `fig`: no offset text (`+4.189e1`) or `1e-3` multiplier."""
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, ScalarFormatter):
                formatter.set_useOffset(False)
                formatter.set_scientific(False)


def save_figure(fig: Any, out_dir: Path, name: str) -> Path:
    """Save a matplotlib figure as out_dir/<name>.png (dpi 150) and a vector copy <name>.pdf for papers (tight box,
    plain tick labels, no creation date so the bytes repeat), atomically; closes the figure. Returns the PNG."""
    import matplotlib.pyplot as plt

    plain_ticks(fig)
    try:
        atomic_write(Path(out_dir) / f"{name}.pdf", lambda tmp: fig.savefig(
            tmp, format="pdf", bbox_inches="tight", metadata={"CreationDate": None}))
        return atomic_write(Path(out_dir) / f"{name}.png",
                            lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_panels(series: Sequence[Mapping], panels: Sequence[str], *, ylabel: str, titles: Mapping | None = None,
                xlabel: str = "training step", ncols: int | None = None, sharey: bool = False):
    """Figure with one axis per panel; each series (dict with panel, label, steps, values) is one line.

    A series with `"dashed": True` is drawn dashed (used for runs that did not converge).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=sharey)
    for ax, panel in zip(axes.flat, panels):
        for s in (s for s in series if s["panel"] == panel):
            ax.plot(s["steps"], s["values"], marker=".", linestyle="--" if s.get("dashed") else "-",
                    label=s["label"])
        ax.set_title((titles or {}).get(panel, panel), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the panel, never over the lines
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def write_experiment_record(out_dir: Path, *, experiment: str, title: str, scale: str, command: str,
                            paper: str, ours: str, notes: str, files: list[str], seed: int,
                            roots: dict[str, str] | None = None, recipes: dict[str, str] | None = None,
                            stages: str | None = None) -> Path:
    """Write out_dir/experiment.json: what `build_results_readme` turns into a section of results/README.md.

    Args:
        experiment: registry name (folder name).
        title: e.g. "Table 1: MoTHer results on the four sub-graphs".
        scale: "toy" | "mini" | "paper".
        command: the exact command that regenerates this folder.
        paper: the paper's number(s), in words.
        ours: our number(s), in words.
        notes: how they compare (say plainly where they differ) and anything a reader must know.
        files: names (relative to out_dir) of the tables and figures written.
        seed: the master seed the results derive from.
        roots: name -> sha256 of the shipped built-in roots when the results were made
            (`data_gen.roots.shipped_digests`); the README flags results made on roots that changed since.
        recipes: graph config -> digest of its recipe (`data_gen.recipes.recipe_digest`) for the graph configs the
            experiment read; the README flags results whose graph recipes changed since.
        stages: for an experiment that scores recoveries, the `analysis.stages` they were told (none: the paper's
            protocol); the README flags another setting, or a record without it.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    out_dir = Path(out_dir)
    missing = [f for f in files if not (out_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: experiment record lists files that do not exist: {missing}")
    record = {"experiment": experiment, "title": title, "scale": scale, "command": command, "paper": paper,
              "ours": ours, "notes": notes, "files": sorted(files), "seed": int(seed)}
    if roots is not None:
        record["roots"] = dict(roots)
    if recipes is not None:
        record["recipes"] = dict(recipes)
    if stages is not None:
        record["stages"] = str(stages)
    return write_json(out_dir / RECORD, record)


def stages_line(record: dict) -> str | None:
    """For a mini-scale record of an experiment that scores recoveries: a README line when they were not told the
    paper's stage protocol (analysis.stages=none), or when the record predates the setting, else None."""
    from analysis.experiments import registry

    known = registry().get(record.get("experiment"))
    if record.get("scale") != "mini" or known is None or not known.recovers:
        return None
    if "stages" not in record:
        return ("- stages: not recorded (made before 77e030d, when the experiments' recoveries were told graph.json's "
                "stages, whose roots are generalization models, instead of the paper's all-specialization); rerun "
                "the command above")
    return (f"- stages: recoveries told analysis.stages={record['stages']}, not the paper's protocol (none)"
            if record["stages"] != "none" else None)


def roots_line(record: dict, shipped: Mapping[str, str] | None = None) -> str | None:
    """For a mini-scale record: a README line when the shipped built-in roots (`shipped`, default: read now) changed
    since it was made (or when it predates the roots record), else None."""
    if record.get("scale") != "mini":
        return None
    if shipped is None:
        from data_gen.roots import shipped_digests

        shipped = shipped_digests()
    made = record.get("roots")
    if made is None:
        return ("- built-in roots: not recorded (made before results recorded the roots they ran on); rerun the "
                "command above to be sure it describes the shipped roots")
    changed = sorted(n for n, h in shipped.items() if made.get(n) != h)
    return (f"- built-in roots: {', '.join(changed)} changed since these results were made; rerun the command above "
            f"to refresh them") if changed else None


def recipes_line(record: dict, current: Mapping[str, str | None] | None = None) -> str | None:
    """For a mini-scale record: a README line when the recipe of a graph config it read changed since it was made
    (`current`: config -> digest now, default: read now; data_gen.recipes), else None (also for records made before
    results recorded their recipes)."""
    if record.get("scale") != "mini" or not record.get("recipes"):
        return None
    from data_gen.recipes import changed_recipes

    changed = changed_recipes(record["recipes"], current)
    return (f"- graph recipes: {', '.join(changed)} changed since these results were made (conf/data_gen); rerun the "
            f"command above to refresh them") if changed else None


_RELATIVE_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|[/#])([^)\s]+\))")


def rebase_links(markdown: str, folder: str) -> str:
    """Markdown links and images relative to `folder` made relative to its parent (for inlining its .md files)."""
    return _RELATIVE_LINK.sub(lambda m: f"{m.group(1)}{folder}/{m.group(2)}", markdown)


def _section(folder: Path, record: dict, shipped: Mapping[str, str], recipes: Mapping[str, str | None]) -> str:
    name = record["experiment"]
    lines = [f"## {record['title']}", "",
             f"- experiment: `{name}` — scale: **{record['scale']}** — seed: {record['seed']}",
             f"- regenerate: `{record['command']}`"
             + (f" (this experiment alone: `python run.py +experiment={name}`)"
                if f"+experiment={name}" not in record["command"] and name != "default" else ""),
             f"- paper: {record['paper']}",
             f"- ours: {record['ours']}"]
    if record.get("notes"):
        lines.append(f"- notes: {record['notes']}")
    for stale in (roots_line(record, shipped), recipes_line(record, recipes), stages_line(record)):
        if stale is not None:
            lines.append(stale)
    lines.append("")
    for f in record["files"]:
        path = folder / f
        if f.endswith(".md"):
            lines += [rebase_links(path.read_text(encoding="utf-8").rstrip(), folder.name), ""]
        elif f.endswith(".png"):
            lines += [f"![{name}: {Path(f).stem}]({folder.name}/{f})", ""]
    other = [f for f in record["files"] if not f.endswith((".md", ".png"))]
    if other:
        lines += ["Files: " + ", ".join(f"[{f}]({folder.name}/{f})" for f in other), ""]
    return "\n".join(lines)


def build_results_readme(results_dir: Path) -> Path:
    """Generate results_dir/README.md from every results_dir/*/experiment.json (in the registry's order)."""
    results_dir = Path(results_dir)
    from analysis.experiments import registry

    known = registry()
    order = {name: i for i, name in enumerate(known)}
    records = sorted(results_dir.glob(f"*/{RECORD}"), key=lambda p: (order.get(p.parent.name, len(order)),
                                                                      p.parent.name))
    parts = ["# Results", "",
             "Generated by `analysis` from each `results/<experiment>/experiment.json`; do not edit by hand.",
             "Each section shows our numbers beside the paper's, the scale they ran at (toy: smoke-test size; "
             "mini: built-in roots and tasks on CPU; paper: ViT-B roots on GPUs) and the exact command that "
             "regenerates them. Where our numbers differ from the paper's, the notes say so.", ""]
    if records:
        parts += ["| experiment | title | scale |", "|---|---|---|"]
        for path in records:
            r = read_json(path)
            parts.append(f"| [{r['experiment']}]({path.parent.name}/) | {r['title']} | {r['scale']} |")
        parts.append("")
    else:
        parts += ["No experiment has been run yet.", ""]
    from data_gen.roots import shipped_digests

    shipped = shipped_digests()   # read once for every section
    from data_gen.recipes import config_names, recipe_digest

    recipes = {n: recipe_digest(n) for n in config_names()}   # likewise
    for path in records:
        parts.append(_section(path.parent, read_json(path), shipped, recipes))
    absent = {k: e.not_run_here for k, e in known.items()
              if e.not_run_here and not (results_dir / k / RECORD).is_file()}
    if absent:
        parts += ["## Not run here", ""] + [f"- `{k}`: {v}" for k, v in absent.items()] + [""]
    return write_text(results_dir / "README.md", "\n".join(parts).rstrip() + "\n")


# ----------------------------------------------------------------------------------- experiment runner
def experiment_dir(cfg: DictConfig, name: str) -> Path:
    """results folder of experiment `name`: ${analysis.out_dir or paths.results_dir}/<name>."""
    root = cfg.analysis.get("out_dir") or cfg.paths.results_dir
    return Path(root) / name


def knobs(cfg: DictConfig, name: str) -> DictConfig:
    """cfg.analysis.<name>, resolved, with the entries a scale left out dropped.

    The scale group (conf/scale/<scale>.yaml) merges over the knob files; since Hydra merges mappings key by key,
    a scale that uses fewer entries of a table (label -> mapping, e.g. Table 1's sub-graphs) sets the others to
    null, and they are dropped here.
    """
    from omegaconf import OmegaConf

    if name not in cfg.analysis:
        raise KeyError(f"cfg.analysis has no '{name}' block: add conf/analysis/{name}.yaml to the analysis defaults")
    return OmegaConf.create(_drop_left_out(OmegaConf.to_container(cfg.analysis[name], resolve=True)))


def _drop_left_out(value: Any) -> Any:
    """Drop null entries of tables (mappings whose every entry is a mapping or null), recursively."""
    if isinstance(value, list):
        return [_drop_left_out(v) for v in value]
    if not isinstance(value, dict):
        return value
    entries = list(value.values())
    table = None in entries and any(isinstance(v, dict) for v in entries) and \
        all(v is None or isinstance(v, dict) for v in entries)
    return {k: _drop_left_out(v) for k, v in value.items() if not (table and v is None)}


QUEUE_OVERRIDES = ("analysis.experiments=", "analysis.queue.", "analysis.keep_going=")


def regenerate_command(cfg: DictConfig, experiment: str | None = None) -> str:
    """The command recorded with results: cfg.analysis.command if set, else `python run.py` plus the
    `+experiment=NAME` it was run with -- or `+experiment=<experiment>`, the one that made the results, when a queue
    such as paper_mini ran it -- then the Hydra command-line overrides, if any, except those that only chose which
    experiments of a queue ran (QUEUE_OVERRIDES). Outside Hydra (tests, notebooks) NAME is the task_name, when that
    experiment config exists (a conf/experiment file or one generated per conf/analysis file, common/paths.py)."""
    from common.paths import experiment_config_names

    names = experiment_config_names()
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
        launched = next((o.split("=", 1)[1] for o in task if o.startswith("+experiment=")), None)
    except ValueError:  # not running under @hydra.main
        task, launched = [], str(cfg.get("task_name") or "")
    command = cfg.analysis.get("command")
    if not command:
        if launched in names and experiment in names:
            launched = experiment
        command = "python run.py" + (f" +experiment={launched}" if launched in names else "")
    overrides = [o for o in task if not o.startswith("+experiment=") and not o.startswith(QUEUE_OVERRIDES)]
    return " ".join([str(command), *overrides])


def run_experiment(cfg: DictConfig, name: str, compute: Callable[[DictConfig], dict],
                   render: Callable[[dict, Path], None], describe: Callable[[dict], dict]) -> dict:
    """compute -> results.json -> render -> experiment.json; returns the results.

    `describe(results)` returns the record's title, paper, ours and notes. Every file render wrote into the
    folder is listed in the record.
    """
    out_dir = experiment_dir(cfg, name)
    results = compute(cfg)
    write_json(out_dir / RESULTS, results)
    render(results, out_dir)
    files = written_files(out_dir)
    text = describe(results)
    from data_gen.recipes import recipe_digest
    from data_gen.roots import shipped_digests

    from analysis.experiments import registry
    from analysis.recover import analysis_stages

    known = registry().get(name)
    write_experiment_record(out_dir, experiment=name, scale=str(cfg.analysis.scale),
                            command=regenerate_command(cfg, name), files=files, seed=int(cfg.seed),
                            roots=shipped_digests(), recipes={n: recipe_digest(n) for n in graphs_read(cfg, name)},
                            stages=analysis_stages(cfg) if known is not None and known.recovers else None, **text)
    log.info("%s: %s", name, text["ours"])
    return results


def graphs_read(cfg: DictConfig, name: str) -> list[str]:
    """The graph configs (conf/data_gen) experiment `name` reads: those its knobs name, and cfg.data_gen's own
    config where the knobs say `graph: null` (the configured graph, as the embedded default's report)."""
    from data_gen.recipes import config_names, configs_read

    if "analysis" not in cfg or name not in cfg.analysis:   # an experiment without knobs names no graph
        return []
    names = [n for n in config_names() if n != "base"]   # base: shared keys, part of every config's digest
    found = configs_read(knobs(cfg, name), names)
    raw = cfg.analysis[name]   # knobs() drops null entries
    if "graph" in raw and raw.graph is None and cfg.get("data_gen") and cfg.data_gen.get("name") in names:
        found = sorted({*found, str(cfg.data_gen.name)})
    return found


def ours_vs_paper(bars: Sequence[Mapping], *, title: str, ylabel: str = "edge accuracy", ax: Any = None,
                  ylim: tuple[float, float] | None = (0.0, 1.08)):
    """Grouped bars, ours beside the paper's, one group per entry of `bars`, each value written above its bar.

    Each entry: {"label", "ours", "paper"} and optionally "ours_err" / "paper_err" (error bars, e.g. a std over
    repeats). A missing paper number (None or NaN) leaves its bar out and says "paper: n/a". Draws into `ax` when
    given; returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.6, 1.3 * len(bars) + 1.6), 3.4), layout="constrained")
    width = 0.38
    for k, bar in enumerate(bars):
        for side, shift, style in (("ours", -width / 2, {"color": "C0"}),
                                   ("paper", width / 2, {"color": "C1", "hatch": "//", "alpha": 0.8})):
            value = bar.get(side)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                ax.text(k + shift, 0.02, f"{side}: n/a", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            ax.bar(k + shift, value, width, yerr=bar.get(f"{side}_err"), capsize=3,
                   label=side if k == 0 or side not in ax.get_legend_handles_labels()[1] else None, **style)
            ax.text(k + shift, value, f"{value:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(bars)), [str(b["label"]) for b in bars], fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def written_files(out_dir: Path) -> list[str]:
    """The files an experiment wrote into its folder (what its record lists), sorted."""
    return sorted(p.name for p in Path(out_dir).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name != RECORD)


def rerender(out_dir: Path, render: Callable[[dict, Path], None],
             describe: Callable[[dict], dict] | None = None) -> None:
    """Redraw tables and figures of an experiment folder from its results.json (no recomputation); its record
    then lists the files now there (a restyle may add some, e.g. the PDF copies) and, given `describe`, its
    title / paper / ours / notes as `describe` now words them."""
    out_dir = Path(out_dir)
    results = read_json(out_dir / RESULTS)
    render(results, out_dir)
    if (out_dir / RECORD).is_file():
        text = describe(results) if describe is not None else {}
        write_json(out_dir / RECORD, {**read_json(out_dir / RECORD), **text, "files": written_files(out_dir)})


MATCH_TOL = 0.05   # our number matches the paper's when within this of it


def compare(ours: float, paper: float, *, tol: float = MATCH_TOL, what: str = "accuracy") -> str:
    """A plain sentence comparing our number with the paper's."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return f"our {what} is not available"
    diff = ours - paper
    if abs(diff) <= tol:
        return f"our {what} {ours:.3f} matches the paper's {paper:.3f} within {tol}"
    side = "higher" if diff > 0 else "lower"
    return f"our {what} {ours:.3f} differs from the paper's {paper:.3f} ({abs(diff):.3f} {side})"
