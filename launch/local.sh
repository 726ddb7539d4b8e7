#!/usr/bin/env bash
# One training run on this machine. Re-running the same command resumes it.
#
# Edit CONFIG and WORKDIR below (or set them in the environment); anything after
# the script name is passed on as overrides, e.g.
#   launch/local.sh --config.total_epochs=50
#   CONFIG=configs/deit_cifar100.py WORKDIR=runs/deit launch/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/register.py:quick}
WORKDIR=${WORKDIR:-runs/local}
PYTHON=${PYTHON:-python}
# exec: SIGTERM reaches the trainer itself, which checkpoints and exits 75.
exec "$PYTHON" -m vit_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
