#!/usr/bin/env bash
# Run the paper-scale analysis experiments, one SLURM job each (one multirun over +experiment), after
# build_graphs.sh; results land in results/<experiment>/ as with `python run.py +experiment=NAME`.
#   bash scripts/slurm/experiments.sh                           # the list below
#   bash scripts/slurm/experiments.sh table1,pruning -- paths.graphs_dir=/scratch/graphs
source "$(dirname "$0")/common.sh"
list=${1:-table1,lora_ablation,resnet,deep,c_sensitivity,pruning,quantization,fig6_clustering,fig8_stats,fig13_layers}
shift || true; [ "${1:-}" = "--" ] && shift
"$PYTHON" run.py -m "+experiment=$list" scale=paper task_name=paper_experiments "${LAUNCH[@]}" "$@"
