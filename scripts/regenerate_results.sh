#!/usr/bin/env bash
# Regenerate every mini-scale result of the paper into results/ and rebuild results/README.md.
# Graphs already built under graphs/ (or $MOTHER_GRAPHS_DIR) are reused; a first run builds them (hours on a
# 2-core CPU). Extra arguments are Hydra overrides, e.g. `scripts/regenerate_results.sh num_threads=2`.
# The Stable Diffusion experiment needs the hub and is not part of it (results/README.md says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"   # mini scale never needs the hub; fail fast instead of retrying
"$PY" run.py +experiment=paper_mini "$@"   # the paper's experiments, with the paper's method
"$PY" run.py "$@"                          # the embedded default (results/default), with the default recovery
echo "results/README.md rebuilt; commit results/ to publish the numbers"
