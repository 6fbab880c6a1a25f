"""Records a trained SDTP decoder run: its curve and what the modules learned, held out.

    python benchmarks/sdtp_decoder_training.py --workdir=runs/smollm_sdtp \\
        --command="python -m tpjax.training.sdtp_decoder --config=configs/smollm_sdtp.py \\
        --workdir=runs/smollm_sdtp" --ratios=0.9,0.88 --load_log=FILE \\
        --out=benchmarks/results/sdtp_decoder_training.json

Top-k agreement per stage: the fraction of the true saliency's top-k (k = the stage's
kept share of the prunable tokens) that the module's top-k also picks, both on the
unpruned model's hidden states. Chance is k over the prunable tokens (a random top-k's
expected overlap). Two held-out sets: the run's own held-out windows of training
articles (from its sdtp.json, before and after training), and `--eval_windows` windows
of the evaluation articles (odd indices, one per article from its start), whose
saliency this script computes with the run's target definition (one forward and
backward pass per window): the articles the quality benchmark evaluates on.
"""

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tpjax.data import squad_docs  # pylint: disable=g-import-not-at-top
from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
from tpjax.pruning import sdtp  # pylint: disable=g-import-not-at-top
from tpjax.pruning import sdtp_decoder  # pylint: disable=g-import-not-at-top
from tpjax.results import curves  # pylint: disable=g-import-not-at-top
from tpjax.results import tables  # pylint: disable=g-import-not-at-top
from tpjax.training import sdtp_decoder as training  # pylint: disable=g-import-not-at-top


def parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/smollm_sdtp")
  parser.add_argument("--command", required=True, help="the command that trained it")
  parser.add_argument("--ratios", default="0.9,0.88",
                      help="keep ratios r (stage s keeps r^(s+1)) to measure at")
  parser.add_argument("--eval_windows", type=int, default=16)
  parser.add_argument("--wall_time_s", type=float, default=None,
                      help="the training's wall time, for runs that did not record it")
  parser.add_argument("--load_log", default=None,
                      help="load averages sampled during the training, one per line")
  parser.add_argument("--out", default="benchmarks/results/sdtp_decoder_training.json")
  return parser.parse_args(argv)


def chance(prunable: np.ndarray, keep: tuple) -> list:
  """Per stage: a random top-k's expected overlap with any top-k, k / prunable."""
  n = prunable.sum(-1)
  return [float(np.mean(np.maximum(1, np.round(k * n)) / n)) for k in keep]


def main(argv=None) -> dict:
  args = parse(argv)
  with open(os.path.join(args.workdir, "sdtp.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  model, params, tokenizer = pretrained.load_pretrained(config.model)
  predictors, schedule, meta = sdtp_decoder.load_predictors(args.workdir, model.config)
  _, evaluation = squad_docs.split(squad_docs.load_articles(config.squad_path))
  windows = training.training_windows(tokenizer, evaluation, config.saliency.window, 1,
                                      args.eval_windows)
  hiddens, targets, _ = training.compute_targets(model, params, windows, schedule, config)
  prunable = np.broadcast_to(~training.always_mask(windows.shape[1], schedule),
                             windows.shape)
  by_ratio = {}
  for ratio in [float(r) for r in args.ratios.split(",")]:
    at = dataclasses.replace(schedule,
                             keep=sdtp.geometric_ratios(len(schedule.layers), ratio))
    by_ratio[str(ratio)] = {
        "keep": list(at.keep), "chance": chance(prunable, at.keep),
        "agreement": training.topk_agreement(predictors, hiddens, targets, prunable, at)}
  log = meta["log"]
  holdout = config.train.holdout_windows
  results = {
      "command": args.command,
      "record_command": " ".join(["python", *sys.argv[:1], *(
          sys.argv[1:] if argv is None else argv)]),
      "recipe": meta["recipe"], "model": config.model,
      "train_windows": meta["windows"] - holdout, "window": config.saliency.window,
      "steps": config.train.steps, "batch_size": config.train.batch_size,
      "wall_time_s": meta.get("wall_time_s", args.wall_time_s),
      "load_average": curves.load_average(args.load_log) if args.load_log else None,
      "predictors_sha256": meta["sha256"],
      "schedule": {"layers": list(schedule.layers), "keep": list(schedule.keep),
                   "keep_first": schedule.keep_first, "keep_last": schedule.keep_last},
      "topk_agreement": {
          "training_holdout": {
              "windows": holdout, "ratio": config.schedule.ratio,
              "keep": list(schedule.keep),
              "chance": chance(prunable[:1], schedule.keep),
              "before": log["before"]["topk_agreement"],
              "after": log["after"]["topk_agreement"]},
          "evaluation_articles": {"windows": int(windows.shape[0]),
                                  "ratios": by_ratio}},
      "curve": log["curve"]}
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(tables.table_for(os.path.basename(args.out), results))
  return results


if __name__ == "__main__":
  main()
