#!/usr/bin/env bash
# How the :fmnist model size was chosen: the vanilla DeiT-III :fmnist recipe at width 64
# with LAMB lr 2e-3 and 5e-3, then width 96 at the better lr, each trained for the epochs that fit
# ~15 minutes on this 2-core CPU by its step time measured on a quiet machine (39 and 63
# s per epoch); the best final top-1 in that budget picks the size. (Width 128, 98 s per
# epoch, 8 epochs, was dropped: the machine was shared, see results/fashion_mnist.md.)
# Run from the repository root; a finished run is kept.
set -euo pipefail
run() {  # name width depth heads epochs lr
  [ -f runs/scale/$1/metrics.csv ] && [ "$(tail -1 runs/scale/$1/metrics.csv | cut -d, -f1)" = "$5" ] && return
  python -m vit_jax.main --config configs/vanilla.py:fmnist --workdir runs/scale/$1 \
      --config.model.width=$2 --config.model.depth=$3 --config.model.num_heads=$4 \
      --config.total_epochs=$5 --config.optim.lr=$6 > runs/scale/$1.log 2>&1
}
mkdir -p runs/scale
run w64_d4_lr2e-3 64 4 2 20 2e-3
run w64_d4_lr5e-3 64 4 2 20 5e-3
run w96_d4_lr5e-3 96 4 3 13 5e-3
