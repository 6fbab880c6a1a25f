"""tpjax.results.plots draws what it claims: checked on the pixels and markup it writes."""

import html.parser
import os

from matplotlib import colors as mcolors
from matplotlib import image as mimage
import numpy as np
import pytest

from tpjax.results import files as result_files
from tpjax.results import plots

_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "results")


def _mask(img: np.ndarray, colour: str) -> np.ndarray:
  """<bool>[height, width]: pixels of `colour` (RGBA image in [0, 1])."""
  return np.all(np.abs(img[..., :3] - mcolors.to_rgb(colour)) < 0.02, axis=-1)


def _runs(flags: np.ndarray) -> int:
  """Number of runs of True in a 1-D boolean array."""
  flags = np.concatenate([[False], flags.astype(bool)])
  return int(np.sum(flags[1:] & ~flags[:-1]))


def _assert_picture(path: str, width: int, height: int) -> np.ndarray:
  img = mimage.imread(path)
  assert img.shape[:2] == (height, width)
  assert img[..., :3].std() > 0.05  # not blank
  return img


@pytest.mark.parametrize("layers", [2, 6])
def test_heatmap_has_one_row_per_layer(tmp_path, layers):
  tokens = ["[CLS]", "a", "<b>", "film", "is", "good", "[SEP]"]
  kept = np.ones((layers, len(tokens)), bool)
  for layer in range(layers):  # cumulative: one more token gone per layer
    kept[layer:, len(tokens) - 1 - layer % 5] = False
  path = str(tmp_path / "survival.png")
  fig = plots.survival_heatmap(tokens, kept, path=path)
  width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
  img = _assert_picture(path, width, height)
  cells = _mask(img, plots.KEPT_COLOUR) | _mask(img, plots.PRUNED_COLOUR)
  assert _runs(cells.any(axis=1)) == layers
  assert _runs(cells.any(axis=0)) == len(tokens)
  # The last layer's row holds exactly its pruned cells in PRUNED_COLOUR.
  rows = np.flatnonzero(cells.any(axis=1))
  last_row = img[rows[-1] - 2]
  assert _runs(_mask(last_row[None], plots.PRUNED_COLOUR)[0]) == (~kept[-1]).sum()


def test_heatmap_checks_token_count():
  with pytest.raises(ValueError, match="3 tokens"):
    plots.survival_heatmap(["a", "b", "c"], np.ones((2, 4), bool))


def test_survival_from_record():
  record = {"input_tokens": ["[CLS]", "x", "y", "[SEP]"],
            "kept_positions": [[0, 1, 2, 3], [0, 2], [0]]}
  tokens, kept = plots.survival_from_record(record)
  assert tokens == record["input_tokens"]
  np.testing.assert_array_equal(kept.sum(axis=1), [4, 2, 1])
  assert kept[1].tolist() == [True, False, True, False]


class _Counter(html.parser.HTMLParser):
  """Counts sections, layer rows, token spans and scripts in an HTML page."""

  def __init__(self):
    super().__init__()
    self.counts = {"section": 0, "layer": 0, "tok": 0, "script": 0, "link": 0}
    self.text = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    for key in ("section", "script", "link"):
      self.counts[key] += tag == key
    self.counts["layer"] += tag == "tr" and attrs.get("class") == "layer"
    self.counts["tok"] += tag == "span" and attrs.get("class") == "tok"

  def handle_data(self, data):
    self.text.append(data)


def test_html_is_self_contained_and_escaped(tmp_path):
  items = [{"tokens": ["[CLS]", "<script>", "ok"], "kept": [[1, 1, 1], [1, 0, 1]],
            "caption": "first & best"},
           {"tokens": ["[CLS]", "b"], "kept": [[1, 1], [1, 0]]}]
  path = str(tmp_path / "kept.html")
  text = plots.survival_html(items, path)
  with open(path, encoding="utf-8") as f:
    assert f.read() == text
  parser = _Counter()
  parser.feed(text)
  assert parser.counts == {"section": 2, "layer": 4, "tok": 5, "script": 0, "link": 0}
  assert "<script>" in "".join(parser.text)  # shown as text, not markup
  assert "first & best" in "".join(parser.text)
  assert "http" not in text  # nothing fetched from elsewhere
  assert 'title="pruned at layer 2"' in text and 'title="kept by every layer"' in text


def test_pareto_front():
  def p(flops, accuracy):
    return result_files.Point("s", flops, accuracy, "", "x")
  points = [p(1.0, 0.9), p(0.6, 0.89), p(0.7, 0.88), p(0.5, 0.80), p(0.6, 0.85)]
  assert result_files.pareto_front(points) == [p(0.5, 0.80), p(0.6, 0.89), p(1.0, 0.9)]


def test_pareto_plot_of_the_measured_results(tmp_path):
  # MRPC: its converged baseline has measured curves (SST-2's has none yet)
  points = result_files.accuracy_points(_RESULTS, "mrpc")
  series = list(dict.fromkeys(p.series for p in points))
  assert {"topk, training-free", "threshold, training-free"} <= set(series)
  # one baseline: every point was measured against MRPC's recorded baseline
  base = result_files.task_baseline("mrpc", _RESULTS)
  measured = result_files.read_all(_RESULTS)
  assert all(result_files.uses_baseline(measured[p.source], base) for p in points)
  path = str(tmp_path / "pareto.png")
  plots.pareto_plot(points, path=path)
  img = _assert_picture(path, 640, 440)
  for i in range(len(series)):  # every series is drawn in its own colour
    assert _mask(img, f"C{i}").sum() > 20, series[i]


def test_every_benchmark_system_has_its_own_colour():
  from tpjax.inference import benchmark
  assert set(benchmark.SYSTEMS) <= set(plots.SYSTEM_COLOURS)
  assert len(set(plots.SYSTEM_COLOURS.values())) == len(plots.SYSTEM_COLOURS)


def test_throughput_plot_has_one_bar_per_system(tmp_path):
  # The measured benchmarks, or one made up (numbers of an old real run) when
  # benchmarks/results holds none.
  values = {"pruned": (191.4, 9.35), "unpruned": (162.2, 5.33), "keep_all": (150.4, 7.04),
            "padded": (22.0, 13.11), "hf_pytorch": (43.3, 10.13)}
  made_up = {"task": "sst2", "split": "validation", "examples": 872, "workdir": "runs/x",
             "method": "ltp", "batch_size": 32, "buckets": [128],
             "systems": {k: {"examples_per_s": v[0], "latency_p50_ms": v[1]}
                         for k, v in values.items()}}
  benchmarks = list(result_files.inference_results(_RESULTS).values()) or [made_up]
  path = str(tmp_path / "throughput.png")
  fig = plots.throughput_plot(benchmarks, path=path)
  width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
  img = _assert_picture(path, width, height)
  bars = np.zeros(img.shape[:2], bool)
  for colour in plots.SYSTEM_COLOURS.values():
    bars |= _mask(img, colour)
  assert _runs(bars.any(axis=1)) == sum(len(b["systems"]) for b in benchmarks)
  # Two panels (throughput, latency) side by side.
  assert _runs(bars.any(axis=0)) == 2
