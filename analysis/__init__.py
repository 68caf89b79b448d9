"""Stage 3: the paper's experiments, each writing tables and figures into results/<experiment>/.

`analysis.stage.run(cfg)` runs the experiments queued by the knob files (`queue: {name: true}`) or named in `cfg.analysis.experiments` (registry:
`analysis.experiments.registry()`, filled by `@experiment(name)` on each module's `run`). Adding an experiment: see
`analysis/experiments/__init__.py` and README ("Adding an experiment"). Graphs are named by specs
(`analysis.graphs.resolve_graph`: a conf/data_gen name, {data_gen, overrides}, {path} or {synthetic}); recovery runs
go through `analysis.recover` (cached per graph and options). `python -m analysis.stage` redraws finished
experiments from their results.json.
"""
