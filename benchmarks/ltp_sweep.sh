#!/usr/bin/env bash
# LTP at several lambda values, each run started from the task's one baseline
# (benchmarks/results/baselines.json), then the task's LTP curve. Each run chooses its
# checkpoints on the held-out selection slice and reports dev once (tpjax.main);
# plot_curve refuses runs that chose on dev or started elsewhere.
#   TASK=sst2 benchmarks/ltp_sweep.sh 0.02 0.05 0.08 0.12
# Environment: TASK (default sst2; config configs/$TASK.py), SOFT_EPOCHS and
# HARD_EPOCHS (default: the config's), LEVELS (plot_curve --flops_levels: keep the
# best run per FLOPs level, judged on the slice; default every run), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TASK=${TASK:-sst2}
BASE=$($PY benchmarks/baseline.py --task="$TASK" --print=workdir)
extra=()
[ -n "${SOFT_EPOCHS:-}" ] && extra+=(--config.stage_settings.soft.num_epochs="$SOFT_EPOCHS")
[ -n "${HARD_EPOCHS:-}" ] && extra+=(--config.stage_settings.hard.num_epochs="$HARD_EPOCHS")
runs=()
for lam in "$@"; do
  $PY -m tpjax.main --config="configs/$TASK.py" --workdir="runs/${TASK}_ltp_lam$lam" \
    --config.init_from="$BASE" --config.stages='("soft","hard")' \
    --config.pruning.reg_lambda="$lam" --config.train.progress_bar=False "${extra[@]}"
  runs+=("runs/${TASK}_ltp_lam$lam")
done
$PY benchmarks/plot_curve.py --task="$TASK" --ltp="$(IFS=,; echo "${runs[*]}")" \
  --flops_levels="${LEVELS:-}" --out="benchmarks/results/${TASK}_curve_ltp"
