"""`python -m tpjax.predict --workdir=DIR --input=FILE|-`: one JSON line per input line.

Input is text, one example per line; for sentence-pair tasks the two texts are
separated by a tab. Output lines come in input order; a bad line gets its own record
with an "error" field (see tpjax/inference/predict.py). `--html=FILE` also writes
which tokens each layer kept, as coloured text and a grid per input (tpjax/results/plots.py).
"""

import json
import sys

from absl import flags

from tpjax import cli
from tpjax.results import plots
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
_HTML = flags.DEFINE_string("html", None, "Also write the kept tokens of every input "
                            "to this self-contained HTML file.")
_KEPT_FIELDS = ("input_tokens", "kept_positions", "kept_tokens")


def _caption(record: dict, text: bytes) -> str:
  """The input line and its prediction, for the HTML view."""
  answer = (f"score {record['score']:.3f}" if "score" in record else
            f"label {record['label']} (p={max(record['probabilities']):.2f})")
  return f"line {record['line']}: {text.decode('utf-8').strip()} -> {answer}"


def check_flags(batch_size: int, chunk: int) -> None:
  """Raises ValueError (a user error: one paragraph, exit 2) for unusable flag values."""
  for name, value in (("batch_size", batch_size), ("chunk", chunk)):
    if value < 1:
      raise ValueError(f"--{name}={value} is not allowed (an integer of at least 1).")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments {argv[1:]}; pass the input file with "
                     "--input=FILE.")
  check_flags(_BATCH.value, _CHUNK.value)
  run = loading.load_run(_WORKDIR.value)
  predictor = predict.Predictor(run, _BATCH.value, prune=not _NO_PRUNE.value)
  source = sys.stdin.buffer if _INPUT.value == "-" else open(_INPUT.value, "rb")
  sink = sys.stdout if _OUTPUT.value == "-" else open(_OUTPUT.value, "w")
  line = 1
  pictures = []
  want_kept = _SHOW_KEPT.value or bool(_HTML.value)
  try:
    for chunk in predict.chunks(source, _CHUNK.value):
      for raw, record in zip(chunk, predictor.predict_lines(chunk, line, want_kept)):
        if _HTML.value and "error" not in record:
          tokens, kept = plots.survival_from_record(record)
          pictures.append({"tokens": tokens, "kept": kept,
                           "caption": _caption(record, raw)})
        if not _SHOW_KEPT.value:
          record = {k: v for k, v in record.items() if k not in _KEPT_FIELDS}
        sink.write(json.dumps(record) + "\n")
      sink.flush()
      line += len(chunk)
  finally:
    if source is not sys.stdin.buffer:
      source.close()
    if sink is not sys.stdout:
      sink.close()
  if _HTML.value:
    plots.survival_html(pictures, _HTML.value,
                      title=f"tpjax: tokens kept by {_WORKDIR.value}")
    print(f"Kept tokens of {len(pictures)} inputs written to {_HTML.value}",
          file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main, "tpjax.predict")
