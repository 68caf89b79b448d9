"""Stage 3: the paper's experiments, each writing tables and figures into results/<experiment>/.

`analysis.stage.run(cfg)` runs the experiments named in `cfg.analysis.experiments`; each experiment is a module
in `analysis.experiments` with `compute(cfg) -> dict`, `render(results, out_dir)` and `run(cfg) -> dict`.
"""
