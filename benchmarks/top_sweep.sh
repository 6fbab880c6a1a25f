#!/usr/bin/env bash
# ToP at several FLOPs sparsity targets t, each one soft stage started from the task's
# one baseline (benchmarks/results/baselines.json), then the task's ToP curve. Each
# run's checkpoint is the most accurate on the held-out selection slice within
# relative FLOPs 1 - t + SLACK (on the slice); dev is reported once, there.
#   TASK=sst2 benchmarks/top_sweep.sh 0.3 0.4 0.5 0.6
# Environment: TASK (default sst2; config configs/${TASK}_top.py), SLACK (default
# 0.03), SOFT_EPOCHS (default: the config's), LEVELS (plot_curve --flops_levels;
# default every run), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TASK=${TASK:-sst2}
SLACK=${SLACK:-0.03}
BASE=$($PY benchmarks/baseline.py --task="$TASK" --print=workdir)
extra=()
[ -n "${SOFT_EPOCHS:-}" ] && extra+=(--config.stage_settings.soft.num_epochs="$SOFT_EPOCHS")
runs=()
for t in "$@"; do
  budget=$(awk -v t="$t" -v s="$SLACK" 'BEGIN { printf "%.4g", 1 - t + s }')
  $PY -m tpjax.main --config="configs/${TASK}_top.py" --workdir="runs/${TASK}_top_t$t" \
    --config.init_from="$BASE" --config.stages='("soft",)' \
    --config.pruning.top_target="$t" --config.stage_settings.soft.flops_budget="$budget" \
    --config.train.progress_bar=False "${extra[@]}"
  runs+=("runs/${TASK}_top_t$t")
done
$PY benchmarks/plot_curve.py --task="$TASK" --top="$(IFS=,; echo "${runs[*]}")" \
  --flops_levels="${LEVELS:-}" --out="benchmarks/results/${TASK}_curve_top"
