"""Calibration of one probe tree grown from any root file, with a candidate full fine-tuning or LoRA recipe.

    python scripts/calibrate_probe.py graphs/probes/w64_s10k/final.safetensors --label s10k_adamw3e4 \
        --optimizer adamw --lr 3e-4
    python scripts/calibrate_probe.py data_gen/assets/roots/vit_a1.safetensors --label lora_f_2e3 \
        --method lora --graph lora_f_mini --lr 2e-3

Builds the graph config's tree shape (one root, 20 fine-tunes; ft_mini for --method full, lora_v_mini for lora)
at data_gen seed 2 with the recipe's overrides of that method, measured with the paper's distance for it (l2 /
LoRA rank),
then runs the calibration experiment on it (weights-only regime measures, plus `--longer` nodes rerun 4x longer).
Outputs under <graphs>/probes/calibration/<label>/ (graph, results, tables). A tool for choosing mini recipes by
training evidence (issue 14); recovery accuracy is not computed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf, open_dict  # noqa: E402

from common.paths import project_root  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="root weights (.safetensors)")
    p.add_argument("--label", required=True)
    p.add_argument("--arch", default="vit_mini")
    p.add_argument("--task", default="pretrain/mix_a", help="the root's pretraining task (recorded)")
    p.add_argument("--method", choices=("full", "lora"), default="full", help="the fine-tuning method probed")
    p.add_argument("--graph", default=None, help="data_gen config giving the tree shape, tasks and recipe "
                   "(default: ft_mini for full, lora_v_mini for lora)")
    p.add_argument("--optimizer", default=None)
    p.add_argument("--lr", type=float, nargs="*", default=None, help="one value, or several to choose among")
    p.add_argument("--longer", type=int, default=3, help="nodes rerun 4x longer (convergence)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--depth", type=int, default=None, help="override the tree depth (e.g. 1 for a quick check)")
    p.add_argument("--children", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap every fine-tune (quick check only)")
    p.add_argument("--n-train", type=int, default=None, help="training images per fine-tune task")
    p.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="epochs drawn per node in [LO, HI]")
    args = p.parse_args()

    from analysis import stage
    from common.paths import register_resolvers
    from hydra import compose, initialize_config_dir

    register_resolvers()
    graphs = Path(os.environ.get("MOTHER_GRAPHS_DIR", project_root() / "graphs"))
    base = graphs / "probes" / "calibration" / args.label
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "+experiment=calibration", f"paths.graphs_dir={base / 'graphs'}", f"paths.results_dir={base / 'results'}",
            f"paths.log_dir={base / 'logs'}", f"paths.output_dir={base / 'out'}",
            f"analysis.calibration.longer_nodes={args.longer}"])
    method: dict = {}
    if args.optimizer:
        method["optimizer"] = args.optimizer
    if args.lr:
        method["lr"] = args.lr[0] if len(args.lr) == 1 else {"choices": list(args.lr)}
    overrides = {"name": f"calib_{args.label}", "seed": args.seed, "workers": 1,
                 "roots": [{"id": "probe", "source": str(args.root.resolve()), "arch": args.arch, "task": args.task}]}
    if args.max_steps:
        method["max_steps"] = args.max_steps
    if args.n_train:
        method["n_train"] = args.n_train
    if args.epochs:
        method["epochs"] = {"range": list(args.epochs)}
    for key in ("depth", "children"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if method:
        overrides["methods"] = {args.method: method}
    graph = args.graph or ("ft_mini" if args.method == "full" else "lora_v_mini")
    recovery = OmegaConf.to_container(cfg.analysis.recovery_for[args.method], resolve=True)
    label = "FT" if args.method == "full" else "LoRA"
    with open_dict(cfg):
        cfg.analysis.calibration.graphs = OmegaConf.create(
            {label: {"graph": {"data_gen": graph, "overrides": overrides}, "recovery": recovery}})
        cfg.analysis.calibration.roots = []
    stage.run(cfg)
    print((base / "results" / "calibration" / "calibration.md").read_text())


if __name__ == "__main__":
    main()
