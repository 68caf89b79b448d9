#!/usr/bin/env bash
# Build the paper's model graphs on SLURM, one job array per graph level (resumable: rerun after any failure).
#   bash scripts/slurm/build_graphs.sh                 # lora_v lora_f ft mixed deep resnet
#   bash scripts/slurm/build_graphs.sh ft lora_v -- paths.graphs_dir=/scratch/graphs
# Run on the login node (inside tmux/screen): this process only submits and waits.
source "$(dirname "$0")/common.sh"
graphs=(); extra=()
while [ $# -gt 0 ]; do [ "$1" = "--" ] && { shift; extra=("$@"); break; }; graphs+=("$1"); shift; done
if [ ${#graphs[@]} -eq 0 ]; then graphs=(lora_v lora_f ft mixed deep resnet); fi
for g in "${graphs[@]}"; do
  echo "== graph $g"
  "$PYTHON" scripts/slurm/build_graph.py "data_gen=$g" task_name="graph_$g" "${LAUNCH[@]}" "${extra[@]}"
done
