#!/usr/bin/env bash
# LTP on SST-2 at several lambda values (soft 0.5 + hard 0.5 epoch, as configs/sst2.py) from the same
# fine-tuned run (runs/sst2_ft, made by the finetune stage of configs/sst2.py).
set -euo pipefail
cd "$(dirname "$0")/.."
for lam in "$@"; do
  .venv/bin/python -m tpjax.main --config=configs/sst2.py --workdir=runs/sst2_ltp_lam${lam} \
    --config.init_from=runs/sst2_ft --config.stages='("soft","hard")' \
    --config.pruning.reg_lambda=${lam} --config.stage_settings.soft.num_epochs=0.5 \
    --config.stage_settings.hard.num_epochs=0.5 --config.train.progress_bar=False
done
