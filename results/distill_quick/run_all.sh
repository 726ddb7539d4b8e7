#!/bin/bash
# Every run of results/distill_quick.md, one after the other (about 70 minutes on the
# 2-core CPU machine). Workdirs go to runs/; each student's metrics.csv is copied here.
#   bash results/distill_quick/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/distill_quick
main() { python -m vit_jax.main "$@" > /dev/null; }

main --config configs/teacher_resnet.py:quick --workdir runs/teacher_quick
main --config configs/teacher_resnet.py:quick --workdir runs/teacher60 --config.total_epochs=60
main --config configs/teacher_resnet.py:quick --workdir runs/teacher_cutmix --config.augment.cutmix=1.0
cp runs/teacher_quick/metrics.csv $OUT/teacher_metrics.csv
cp runs/teacher60/metrics.csv $OUT/teacher60_metrics.csv
cp runs/teacher_cutmix/metrics.csv $OUT/teacher_cutmix_metrics.csv

student() {  # name seed kind teacher_workdir [overrides...]
  local name=$1 seed=$2 kind=$3 teacher=$4
  shift 4
  local args=(--config configs/deit_distill.py:quick --workdir runs/distill_${name}_s$seed
              --config.seed=$seed --config.teacher.kind=$kind "$@")
  [ "$kind" != none ] && args+=(--config.teacher.checkpoint=$teacher)
  main "${args[@]}"
  cp runs/distill_${name}_s$seed/metrics.csv $OUT/${name}_s${seed}_metrics.csv
}
REFLECT=--config.dataset.crop_padding_mode=reflect
for s in 0 1 2 3 4; do
  student hard $s hard runs/teacher_quick
  student none $s none ''
  student t60hard $s hard runs/teacher60
  student soft4 $s soft runs/teacher_quick --config.teacher.tau=4.0
  student cutmix_hard $s hard runs/teacher_quick --config.augment.cutmix=1.0
  student cutmix_none $s none '' --config.augment.cutmix=1.0
  student cutmixteacher_hard $s hard runs/teacher_cutmix --config.augment.cutmix=1.0
done
for s in 0 1 2; do
  student crop_hard $s hard runs/teacher_quick --config.dataset.random_crop_padding=2 $REFLECT
  student crop_none $s none '' --config.dataset.random_crop_padding=2 $REFLECT
  student mix_hard $s hard runs/teacher_quick --config.augment.mixup=0.8 --config.augment.cutmix=1.0
  student mix_none $s none '' --config.augment.mixup=0.8 --config.augment.cutmix=1.0
done
for s in 0 1; do
  student pad1_hard $s hard runs/teacher_quick --config.dataset.random_crop_padding=1 $REFLECT
  student pad1_none $s none '' --config.dataset.random_crop_padding=1 $REFLECT
done
python results/distill_quick/teacher_agreement.py
