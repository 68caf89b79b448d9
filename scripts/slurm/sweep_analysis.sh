#!/usr/bin/env bash
# Any analysis ablation as a sweep: each job writes its experiment's results into its own job folder, and the
# jobs' results.json files become one table (mean/std over seeds when seeds are swept).
#   bash scripts/slurm/sweep_analysis.sh pruning 'analysis.pruning.amounts=[0.5],[0.9],[0.99]' seed=0,1,2
#   bash scripts/slurm/sweep_analysis.sh quantization analysis.quantization.fraction=0.25,0.5,1.0
source "$(dirname "$0")/common.sh"
exp=${1:?usage: sweep_analysis.sh EXPERIMENT SWEEP_OVERRIDES...}; shift
stamp=$(date +%Y-%m-%d_%H-%M-%S)
sweep_dir="${MOTHER_LOG_DIR:-logs}/sweep_$exp/multiruns/$stamp"
"$PYTHON" run.py -m "+experiment=$exp" scale=paper 'analysis.out_dir=${hydra:runtime.output_dir}' \
  task_name="sweep_$exp" "hydra.sweep.dir=$sweep_dir" "${LAUNCH[@]}" "$@"
over=(); case " $* " in *" seed="*) over=(--over seed) ;; esac
"$PYTHON" scripts/slurm/collect_sweep.py "$sweep_dir" --results "$exp/results.json" --name "${exp}_sweep" "${over[@]}"
