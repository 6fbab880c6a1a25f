"""A ToP run's checkpoints under both inference rules, one chosen on its held-out slice.

Evaluates the soft stage's final ('latest') state and its 'best' checkpoint with
`top_inference='expected'` and `'reference'` (tpjax/pruning/top.py, `closed_bins`) on
the run's held-out selection slice, chooses the most accurate within the run's FLOPs
budget there (as training hands over: else the fewest FLOPs), and evaluates dev for
that one only (`tpjax.training.sweep.top_rules`).

    python benchmarks/top_rules.py --workdir=runs/sst2_top_t0.5 \
        --out=benchmarks/results/sst2_top_t0.5_rules.json
"""

import json

from absl import flags

from tpjax import cli
from tpjax.training import sweep

_WORKDIR = flags.DEFINE_string("workdir", None, "A ToP run.")
_BUDGET = flags.DEFINE_float("flops_budget", None, "Most relative FLOPs of the choice, "
                             "on the slice (default: the run's soft-stage budget).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  result = sweep.top_rules(_WORKDIR.value, _BUDGET.value)
  print(json.dumps(result["rows"], indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main)
