# Sourced by the scripts in this folder: the launcher overrides shared by every job, from environment variables.
#   SLURM_PARTITION (cluster default)  SLURM_TIME_MIN (240)  SLURM_CPUS (8)  SLURM_GPUS (1)  SLURM_MEM_GB (32)
#   SLURM_PARALLEL (64: array tasks at once)  SLURM_SETUP (e.g. "source ~/mother/.venv/bin/activate")
#   PYTHON (.venv/bin/python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
LAUNCH=(hydra/launcher=slurm
        "hydra.launcher.timeout_min=${SLURM_TIME_MIN:-240}"
        "hydra.launcher.cpus_per_task=${SLURM_CPUS:-8}"
        "hydra.launcher.gpus_per_node=${SLURM_GPUS:-1}"
        "hydra.launcher.mem_gb=${SLURM_MEM_GB:-32}"
        "hydra.launcher.array_parallelism=${SLURM_PARALLEL:-64}")
if [ -n "${SLURM_PARTITION:-}" ]; then LAUNCH+=("hydra.launcher.partition=$SLURM_PARTITION"); fi
if [ -n "${SLURM_SETUP:-}" ]; then LAUNCH+=("hydra.launcher.setup=[\"$SLURM_SETUP\"]"); fi
