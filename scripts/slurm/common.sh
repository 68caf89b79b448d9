# Sourced by the scripts in this folder: the launcher overrides shared by every job, from environment variables.
# (Not SLURM_*: srun inside each job reads SLURM_GPUS, SLURM_PARTITION ... as its own options.)
#   MOTHER_PARTITION (cluster default)  MOTHER_TIME_MIN (240)  MOTHER_CPUS (8)  MOTHER_GPUS (1)  MOTHER_MEM_GB (32)
#   MOTHER_PARALLEL (64: array tasks at once)  MOTHER_SETUP (e.g. "source ~/mother/.venv/bin/activate")
#   PYTHON (.venv/bin/python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
LAUNCH=(hydra/launcher=slurm
        "hydra.launcher.timeout_min=${MOTHER_TIME_MIN:-240}"
        "hydra.launcher.cpus_per_task=${MOTHER_CPUS:-8}"
        "hydra.launcher.gpus_per_node=${MOTHER_GPUS:-1}"
        "hydra.launcher.mem_gb=${MOTHER_MEM_GB:-32}"
        "hydra.launcher.array_parallelism=${MOTHER_PARALLEL:-64}")
if [ -n "${MOTHER_PARTITION:-}" ]; then LAUNCH+=("hydra.launcher.partition=$MOTHER_PARTITION"); fi
if [ -n "${MOTHER_SETUP:-}" ]; then LAUNCH+=("hydra.launcher.setup=[\"$MOTHER_SETUP\"]"); fi
