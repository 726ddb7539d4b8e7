#!/bin/bash
# The four quick variants from the tree TREE into OUT/<variant>/ (issues 14 and 24: the
# check that moving the code changed nothing):  results/house/run_quick.sh TREE OUT
set -e
tree=$(cd "$1" && pwd); mkdir -p "$2"; out=$(cd "$2" && pwd)
cd "$tree"
for v in vanilla register sdpa_gated value_gated; do
  rm -rf "$out/$v"
  PYTHONPATH="$tree" python -m vit_jax.main --config configs/$v.py:quick --workdir "$out/$v" \
    > "$out/$v.log" 2>&1
done
