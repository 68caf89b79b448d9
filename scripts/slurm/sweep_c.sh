#!/usr/bin/env bash
# Sweep the direction weight c of MoTHer on one built graph, one SLURM job per (c, seed), then one table.
#   bash scripts/slurm/sweep_c.sh graphs/ft                       # c in the paper's Fig. 14 range
#   C=0.1,0.3,1.0 bash scripts/slurm/sweep_c.sh graphs/lora_v -- recovery.distance.metric=lora_rank
source "$(dirname "$0")/common.sh"
graph=${1:?usage: sweep_c.sh GRAPH_DIR [-- overrides]}; shift; [ "${1:-}" = "--" ] && shift
C=${C:-0.01,0.03,0.1,0.2,0.3,0.5,1.0,2.0,3.0,4.0,4.99}
stamp=$(date +%Y-%m-%d_%H-%M-%S)
sweep_dir="${MOTHER_LOG_DIR:-logs}/sweep_c/multiruns/$stamp"
# recovery needs no GPU
"$PYTHON" run.py -m +experiment=recover "input=$graph" "ground_truth=$graph/graph.json" "recovery.tree.c=$C" \
  recovery.plot=false task_name=sweep_c "hydra.sweep.dir=$sweep_dir" "${LAUNCH[@]}" hydra.launcher.gpus_per_node=null "$@"
"$PYTHON" scripts/slurm/collect_sweep.py "$sweep_dir" --results metrics.json \
  --fields edge_accuracy,undirected_accuracy,clustering_accuracy --name c_sweep
