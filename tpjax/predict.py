"""`python -m tpjax.predict --workdir=DIR --input=FILE|-`: one JSON line per input line.

Input is text, one example per line; for sentence-pair tasks the two texts are
separated by a tab. Output lines come in input order; a bad line gets its own record
with an "error" field (see tpjax/inference/predict.py).
"""

import json
import sys

from absl import app
from absl import flags

from tpjax.inference import loading
from tpjax.inference import predict

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained tpjax run.")
_INPUT = flags.DEFINE_string("input", "-", "Input file, or - for stdin.")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file, or - for stdout.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples per forward pass.")
_CHUNK = flags.DEFINE_integer("chunk", 1024, "Lines read before results are written.")
_SHOW_KEPT = flags.DEFINE_bool("show_kept", False,
                               "Also list which tokens each layer kept.")
_NO_PRUNE = flags.DEFINE_bool("no_prune", False, "Run the model without pruning.")


def main(argv):
  del argv
  run = loading.load_run(_WORKDIR.value)
  predictor = predict.Predictor(run, _BATCH.value, prune=not _NO_PRUNE.value)
  source = sys.stdin.buffer if _INPUT.value == "-" else open(_INPUT.value, "rb")
  sink = sys.stdout if _OUTPUT.value == "-" else open(_OUTPUT.value, "w")
  line = 1
  try:
    for chunk in predict.chunks(source, _CHUNK.value):
      for record in predictor.predict_lines(chunk, line, _SHOW_KEPT.value):
        sink.write(json.dumps(record) + "\n")
      sink.flush()
      line += len(chunk)
  finally:
    if source is not sys.stdin.buffer:
      source.close()
    if sink is not sys.stdout:
      sink.close()


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
