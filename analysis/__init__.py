"""Stage 3: the paper's experiments, each writing tables and figures into results/<experiment>/.

`analysis.stage.run(cfg)` runs the experiments named in `cfg.analysis.experiments` (registry:
`analysis.experiments.EXPERIMENTS`); each is a module with `compute(cfg) -> dict`, `render(results, out_dir)`
and `run(cfg) -> dict` (usually `analysis.report.run_experiment(cfg, NAME, compute, render, describe)`).

Adding an experiment: write `analysis/experiments/<name>.py`, register it, put its knobs in
`conf/analysis/<name>.yaml` under the key `<name>` (with a `scales: {toy: ..., paper: ...}` block read by
`analysis.report.knobs`), add `conf/experiment/<name>.yaml`, and a toy-scale smoke test. Graphs are named by
specs (`analysis.graphs.resolve_graph`: a conf/data_gen name, {data_gen, overrides}, {path} or {synthetic});
recovery runs go through `analysis.recover` (cached per graph and options). `python -m analysis.stage` redraws
finished experiments from their results.json.
"""
