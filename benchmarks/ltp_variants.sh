#!/usr/bin/env bash
# LTP on SST-2, reference variant against tpjax variant, from one shared fine-tuned run
# (runs/sst2_ft: python -m tpjax.main --config=configs/sst2.py --workdir=runs/sst2_ft
#  --config.stages='("finetune",)'). Arguments: VARIANT:LAMBDA pairs, e.g.
#   benchmarks/ltp_variants.sh reference:0.6 tpjax:0.06
# Stage lengths fit the CPU budget (soft SOFT_EPOCHS, hard HARD_EPOCHS; the reference
# uses 1 and 5); then: python benchmarks/ltp_variants_table.py runs/sst2_ltp_*
set -euo pipefail
cd "$(dirname "$0")/.."
SOFT_EPOCHS=${SOFT_EPOCHS:-0.25}
HARD_EPOCHS=${HARD_EPOCHS:-0.15}
for pair in "$@"; do
  variant=${pair%%:*}
  lam=${pair##*:}
  .venv/bin/python -m tpjax.main --config=configs/sst2.py \
    --workdir=runs/sst2_ltp_${variant}_lam${lam} --config.init_from=runs/sst2_ft \
    --config.stages='("soft","hard")' --config.pruning.variant=${variant} \
    --config.pruning.reg_lambda=${lam} --config.stage_settings.soft.num_epochs=${SOFT_EPOCHS} \
    --config.stage_settings.hard.num_epochs=${HARD_EPOCHS} --config.train.eval_every_steps=100 \
    --config.train.progress_bar=False
done
