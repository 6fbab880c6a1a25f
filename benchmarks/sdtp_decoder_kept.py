"""Where in the prompt each prefill pruner keeps its tokens, on held-out articles.

    python benchmarks/sdtp_decoder_kept.py --workdir=runs/smollm_sdtp --ratio=0.88 \\
        --out=benchmarks/results/sdtp_decoder_kept.json

The same systems, prompts and schedule as benchmarks/sdtp_decoder_quality.py (its flags;
the first `--docs` documents and `--passkey` haystacks of its item lists), prefill only:
- documents: the share of each fifth of the prompt whose tokens reach the last stage's
  layer (the first 4 and the last 10% are always kept, so the last fifth starts at 0.5);
- passkey: the share of the needle sentence's tokens (the key and its sentence) that
  reach each stage's layer, per depth. A pruner that drops the needle before the last
  layers cannot retrieve the key.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top

import sdtp_decoder_quality as quality  # pylint: disable=g-import-not-at-top
from tpjax.data import squad_docs  # pylint: disable=g-import-not-at-top
from tpjax.inference import sdtp_eval  # pylint: disable=g-import-not-at-top
from tpjax.results import tables  # pylint: disable=g-import-not-at-top

DEFAULTS = ["--tasks=documents,passkey", "--out=benchmarks/results/sdtp_decoder_kept.json"]
COUNTS = ["--docs=8,8,4", "--passkey=2,2,1"]  # --smoke keeps the quality script's
FIFTHS = 5


def item_shares(engine, item, schedule, tokenizer) -> dict:
  """This system's kept shares on one item (see the module docstring)."""
  ids = np.asarray([item.prompt], np.int32)
  result = engine.prefill(ids, np.ones_like(ids, bool))
  n = len(item.prompt)
  if item.task == "documents":
    edges = np.linspace(0, n, FIFTHS + 1).round().astype(int)
    spans = list(zip(edges[:-1], edges[1:]))
    return {"fifths": sdtp_eval.kept_shares(result, schedule.layers[-1:], spans)[0].tolist()}
  needle = tokenizer.encode(sdtp_eval.PASSKEY_NEEDLE.format(key=item.info["key"]),
                            add_special_tokens=False)
  span = sdtp_eval.find_span(item.prompt, needle)
  return {"needle": sdtp_eval.kept_shares(result, schedule.layers, [span])[:, 0].tolist()}


def summarize(rows: list, systems: list) -> dict:
  """Means over items: {task: {length[/depth]: {system: shares}}}."""
  out = {}
  for row in rows:
    key = str(row["length"]) + ("" if row["task"] == "documents" else f"/{row['depth']}")
    cell = out.setdefault(row["task"], {}).setdefault(key, {"items": 0, "systems": {}})
    cell["items"] += 1
    for name in systems:
      for metric, values in row["systems"][name].items():
        cell["systems"].setdefault(name, {}).setdefault(metric, []).append(values)
  for task in out.values():
    for cell in task.values():
      for metrics in cell["systems"].values():
        for metric, values in metrics.items():
          metrics[metric] = np.mean(values, axis=0).round(4).tolist()
  return out


def main(argv=None) -> dict:
  given = list(sys.argv[1:] if argv is None else argv)
  args = quality.parse(DEFAULTS + ([] if "--smoke" in given else COUNTS) + given)
  model, params, tokenizer, predictors, schedule, meta = quality.load(args)
  _, evaluation = squad_docs.split(squad_docs.load_articles(args.squad_path))
  engines = quality.engines_for(args, model, params, predictors, schedule)
  del engines["full"]  # keeps everything
  items = [item for item in quality.items_for(args, tokenizer, evaluation)
           if item.task in ("documents", "passkey")]
  prepare = quality.oracle_prepare(args, model, params, schedule, meta)
  start, rows = time.time(), []
  for item in items:
    row = {"task": item.task, "length": item.length, "group": item.group,
           "depth": item.info.get("depth"), "systems": {}}
    for name, engine in engines.items():
      prepare(name, engine, item)
      row["systems"][name] = item_shares(engine, item, schedule, tokenizer)
    rows.append(row)
    print(f"[{time.time() - start:5.0f}s] {item.task} {item.length} {item.group}",
          flush=True)
  results = {"command": " ".join(["sdtp_decoder_kept.py", *given]),
             "workdir": None if args.smoke else args.workdir,
             "predictors_sha256": meta["sha256"],
             "schedule": {"layers": list(schedule.layers), "keep": list(schedule.keep),
                          "keep_first": schedule.keep_first,
                          "keep_last": schedule.keep_last},
             "systems": list(engines), "items": rows, "seconds": time.time() - start,
             "kept_profile": summarize(rows, list(engines))}
  quality._save(results, args.out)  # pylint: disable=protected-access
  print(tables.sdtp_decoder_kept_table(results))
  return results


if __name__ == "__main__":
  main()
