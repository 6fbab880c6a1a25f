"""Training steps/s of two systems, same machine, alternated rounds: two checkouts of
tpjax, or one checkout at two compute dtypes.

Each round runs `python -m tpjax.main` for `--steps` steps of one stage for every
system, each in its own process, and times the steady-state steps: the clock is read
at every progress-bar update, and the first `--skip` steps (compilation, warm-up) are
dropped. Per round it reports the ratio of the systems' median step times, then the
median and spread of those ratios.

  python benchmarks/train_speed.py --checkouts=/work/old,/work/new \
      --stages=finetune,soft --init_from=runs/sst2_ft --rounds=3 \
      --out=benchmarks/results/train_speed.json
  python benchmarks/train_speed.py --dtypes=float32,bfloat16 --stages=finetune,soft \
      --init_from= --rounds=10 --out=benchmarks/results/train_speed_precision.json

`--init_from=` (empty) starts pruning stages from the pretrained weights: the step
time does not depend on how well the weights are trained.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# Runs inside the child: records the time of every progress-bar update, then tpjax.main.
_CHILD = """
import atexit, json, sys, time, tqdm, runpy
stamps = []
update = tqdm.tqdm.update
def timed(self, n=1):
  stamps.append(time.perf_counter())
  return update(self, n)
tqdm.tqdm.update = timed
out = sys.argv.pop(1)
atexit.register(lambda: json.dump(stamps, open(out, "w")))
runpy.run_module("tpjax.main", run_name="__main__")
"""


def step_seconds(system: tuple, stage: str, args, workdir: str) -> float:
  """Median seconds per step after the first `args.skip` steps."""
  checkout, extra = system
  stamps_file = os.path.join(workdir, "stamps.json")
  cmd = [sys.executable, "-c", _CHILD, stamps_file, f"--config={args.config}",
         f"--workdir={workdir}", f"--config.stages=('{stage}',)",
         f"--config.train.max_steps={args.steps}", "--config.train.progress_bar=false",
         f"--config.train.eval_every_steps={10 * args.steps}"] + extra
  if stage != "finetune" and args.init_from:
    cmd.append(f"--config.init_from={os.path.abspath(args.init_from)}")
  subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  with open(stamps_file) as f:
    stamps = json.load(f)
  gaps = [b - a for a, b in zip(stamps[args.skip:], stamps[args.skip + 1:])]
  return statistics.median(gaps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkouts", default="", help="two directories, comma-separated")
  parser.add_argument("--dtypes", default="",
                      help="two compute dtypes, comma-separated, run in this checkout")
  parser.add_argument("--config", default="configs/sst2.py")
  parser.add_argument("--stages", default="finetune,soft")
  parser.add_argument("--init_from", default="runs/sst2_ft")
  parser.add_argument("--steps", type=int, default=80)
  parser.add_argument("--skip", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  if bool(args.checkouts) == bool(args.dtypes):
    parser.error("give either --checkouts or --dtypes")
  if args.checkouts:
    checkouts = args.checkouts.split(",")
    systems = {c: (c, []) for c in checkouts}
  else:
    checkouts = args.dtypes.split(",")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    systems = {d: (here, [f"--config.model.compute_dtype={d}"]) for d in checkouts}
  if len(checkouts) != 2 or not all(os.path.isdir(s[0]) for s in systems.values()):
    parser.error("--checkouts needs two existing directories, --dtypes two dtypes")
  if args.rounds < 1 or args.steps <= args.skip + 1:
    parser.error("need --rounds >= 1 and --steps > --skip + 1")
  result = {"command": " ".join(sys.argv), "steps": args.steps,
            ("checkouts" if args.checkouts else "dtypes"): checkouts,
            "skip": args.skip, "config": args.config,
            "load_average_before": os.getloadavg(), "stages": {}}
  for stage in args.stages.split(","):
    rounds = []
    for r in range(args.rounds):
      order = checkouts if r % 2 == 0 else checkouts[::-1]  # alternate who goes first
      times = {}
      for checkout in order:
        with tempfile.TemporaryDirectory() as workdir:
          times[checkout] = step_seconds(systems[checkout], stage, args, workdir)
      rounds.append({"step_s": [times[c] for c in checkouts],
                     "ratio_new_over_old": times[checkouts[1]] / times[checkouts[0]]})
      print(stage, r, rounds[-1], flush=True)
    ratios = [x["ratio_new_over_old"] for x in rounds]
    result["stages"][stage] = {
        "rounds": rounds, "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "steps_per_s_median": [1 / statistics.median(x["step_s"][i] for x in rounds)
                               for i in range(2)]}
    result["load_average_after"] = os.getloadavg()
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
