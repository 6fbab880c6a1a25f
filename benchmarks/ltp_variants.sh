#!/usr/bin/env bash
# LTP, reference variant against tpjax variant, each run started from the task's one
# baseline (benchmarks/results/baselines.json). Arguments: VARIANT:LAMBDA pairs, e.g.
#   benchmarks/ltp_variants.sh reference:0.6 tpjax:0.06
# Stage lengths fit the CPU budget (soft SOFT_EPOCHS, hard HARD_EPOCHS; the reference
# uses 1 and 5); checkpoints are chosen on the held-out selection slice, evaluated
# every 100 steps. Then the curve file (refuses runs that chose on dev):
#   python benchmarks/ltp_variants_table.py --task=sst2 runs/sst2_ltp_*
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TASK=${TASK:-sst2}
SOFT_EPOCHS=${SOFT_EPOCHS:-0.25}
HARD_EPOCHS=${HARD_EPOCHS:-0.15}
BASE=$($PY benchmarks/baseline.py --task="$TASK" --print=workdir)
for pair in "$@"; do
  variant=${pair%%:*}
  lam=${pair##*:}
  $PY -m tpjax.main --config="configs/$TASK.py" \
    --workdir="runs/${TASK}_ltp_${variant}_lam${lam}" --config.init_from="$BASE" \
    --config.stages='("soft","hard")' --config.pruning.variant="$variant" \
    --config.pruning.reg_lambda="$lam" --config.stage_settings.soft.num_epochs="$SOFT_EPOCHS" \
    --config.stage_settings.hard.num_epochs="$HARD_EPOCHS" --config.train.eval_every_steps=100 \
    --config.train.progress_bar=False
done
