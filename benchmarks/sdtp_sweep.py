"""One trained SDTP run at several keep ratios r, chosen on its held-out slice.

SDTP's keep ratio is an inference setting: the modules are trained once (backbone
frozen) and location s keeps ceil(r^(s+1) * length) tokens. This evaluates a run's
final modules at each r on the run's held-out selection slice (masked evaluation, as
every training summary; compacted inference equals it, tests/test_sdtp_encoder.py),
keeps the best r within each relative-FLOPs level on the slice, and only then
evaluates dev, once per chosen r (`tpjax.training.sweep.sdtp_ratios`), with the
prediction modules' own MACs added in `relative_flops_with_predictors`.

    python benchmarks/sdtp_sweep.py --workdir=runs/sst2_sdtp_r0.7 \
        --ratios=0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.5 \
        --out=benchmarks/results/sst2_sdtp_r0.7_ratios.json
"""

import json

from absl import flags

from tpjax import cli
from tpjax.training import sweep

_WORKDIR = flags.DEFINE_string("workdir", None, "A tpjax run with an SDTP soft stage.")
_RATIOS = flags.DEFINE_list("ratios", [], "Values of r (sdtp_keep_ratio).")
_LEVELS = flags.DEFINE_list("flops_levels", [str(v) for v in sweep.DEFAULT_LEVELS],
                            "Relative FLOPs levels: the best r within each, on the "
                            "slice, is reported on dev.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  result = sweep.sdtp_ratios(_WORKDIR.value, [float(v) for v in _RATIOS.value],
                             [float(v) for v in _LEVELS.value])
  print(json.dumps(result["points"], indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main)
