"""Registry of experiments: name -> module. Each module defines

    compute(cfg: DictConfig) -> dict             # heavy: builds/reuses graphs, runs recovery, JSON-able results
    render(results: dict, out_dir: Path) -> None  # tables and figures from `results` only
    run(cfg: DictConfig) -> dict                 # compute -> results.json -> render -> experiment.json

and reads its knobs from `cfg.analysis.<name>` (conf/analysis/<name>.yaml).
"""
from __future__ import annotations

import importlib
from types import ModuleType

# Calibration first (is the miniature in the paper's regime?), then the paper's order (results/README.md follows it).
EXPERIMENTS: dict[str, str] = {
    "calibration": "analysis.experiments.calibration",
    "table1": "analysis.experiments.table1",
    "lora_ablation": "analysis.experiments.lora_ablation",
    "resnet": "analysis.experiments.resnet",
    "deep": "analysis.experiments.deep",
    "fig1_distance": "analysis.experiments.fig1_distance",
    "fig2_direction": "analysis.experiments.fig2_direction",
    "fig6_clustering": "analysis.experiments.fig6_clustering",
    "stable_diffusion": "analysis.experiments.stable_diffusion",
    "similar_models": "analysis.experiments.similar_models",
    "fig8_stats": "analysis.experiments.fig8_stats",
    "fig13_layers": "analysis.experiments.fig13_layers",
    "pruning": "analysis.experiments.pruning",
    "quantization": "analysis.experiments.quantization",
    "fig16_lr": "analysis.experiments.fig16_lr",
    "merged_models": "analysis.experiments.merged_models",
    "runtime": "analysis.experiments.runtime",
    "c_sensitivity": "analysis.experiments.c_sensitivity",
    "recovery_ablation": "analysis.experiments.recovery_ablation",
    "scale_ladder": "analysis.experiments.scale_ladder",
    "default": "analysis.experiments.default",
}

# Experiments that cannot run on this project's offline CPU machines, and why (listed in results/README.md).
NOT_RUN_HERE: dict[str, str] = {
    "stable_diffusion": "needs the Hugging Face hub to download the five Stable Diffusion 1.1-1.5 UNets (about "
                        "3.4 GB each); on a machine with hub access: `python run.py +experiment=stable_diffusion`",
}


def get(name: str) -> ModuleType:
    """Import the experiment module registered as `name`."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown analysis experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[name])
    for attr in ("compute", "render", "run"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"{EXPERIMENTS[name]} must define {attr}()")
    return module
