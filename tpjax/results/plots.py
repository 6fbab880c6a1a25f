"""Pictures of pruning: token survival, accuracy versus FLOPs, throughput.

Everything draws on matplotlib `Figure` objects with the Agg canvas, so it works
headless (tests, CI) and never touches pyplot's global state; notebooks show a
figure with `IPython.display.Image(plots.png(fig))`.

  survival_heatmap   which tokens each layer kept, one row per layer (PNG)
  survival_html      the same as coloured text plus a per-layer grid, one
                     self-contained HTML file (no scripts, no external assets)
  pareto_plot        every accuracy-versus-FLOPs point, with the Pareto front
  throughput_plot    examples/s and p50 latency of every benchmarked system

Token survival comes from prediction records (`Predictor.predict_lines(...,
show_kept=True)`), via `survival_from_record`.
"""

import html
import io
from typing import Optional, Sequence

from matplotlib import colors as mcolors
from matplotlib import figure as mfigure
from matplotlib.backends import backend_agg
import numpy as np

from tpjax.results import files as result_files
from tpjax.training import selection

KEPT_COLOUR = "#2f9e44"    # a token still present after the layer
PRUNED_COLOUR = "#ffa8a8"  # a token removed at or before the layer
# One colour per benchmarked system (none of them KEPT or PRUNED_COLOUR).
# One colour per benchmark system; a reduced-precision system in a darker shade
# of its float32 counterpart's.
SYSTEM_COLOURS = {"pruned": "#1c7ed6", "pruned_bf16": "#1864ab",
                  "unpruned": "#f59f00", "unpruned_bf16": "#c77700",
                  "keep_all": "#ae3ec9", "padded": "#868e96",
                  "hf_pytorch": "#e8590c", "hf_pytorch_bf16": "#a93f06",
                  "onnxruntime": "#0ca678", "onnxruntime_int8": "#08705a"}
_DPI = 100


def _figure(width: float, height: float) -> mfigure.Figure:
  fig = mfigure.Figure(figsize=(width, height), dpi=_DPI)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig: mfigure.Figure, path: Optional[str]) -> mfigure.Figure:
  if path:
    fig.savefig(path, dpi=_DPI)
  return fig


def png(fig: mfigure.Figure) -> bytes:
  """The figure as PNG bytes, e.g. for `IPython.display.Image(plots.png(fig))`."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_DPI)
  return buffer.getvalue()


def survival_from_record(record: dict) -> tuple[list, np.ndarray]:
  """Tokens and keep mask of one prediction record made with show_kept=True.

  Args:
    record: A `Predictor.predict_lines` record with 'input_tokens' and
      'kept_positions'.

  Returns:
    (tokens, kept): the input's tokens and <bool>[layers, tokens], True where
    the token is still present after that layer.
  """
  tokens = record["input_tokens"]
  kept = np.zeros((len(record["kept_positions"]), len(tokens)), bool)
  for layer, positions in enumerate(record["kept_positions"]):
    kept[layer, positions] = True
  return tokens, kept


def survival_heatmap(tokens: Sequence[str], kept: np.ndarray, title: str = "",
                     path: Optional[str] = None) -> mfigure.Figure:
  """Draws which tokens survive each layer: one row per layer, one column per token.

  Args:
    tokens: The input's tokens, length T.
    kept: <bool>[layers, T], True where the token is present after the layer.
    title: Figure title.
    path: PNG file to write, or None.

  Returns:
    The figure; rows are separated by white gaps, kept cells are KEPT_COLOUR and
    pruned cells PRUNED_COLOUR.
  """
  kept = np.asarray(kept, bool)
  layers, length = kept.shape
  if length != len(tokens):
    raise ValueError(f"kept has {length} columns for {len(tokens)} tokens.")
  fig = _figure(max(3.0, 0.32 * length + 1.6), 0.32 * layers + 1.9)
  ax = fig.add_subplot()
  ax.pcolormesh(np.arange(length + 1), np.arange(layers + 1), kept.astype(float),
                cmap=mcolors.ListedColormap([PRUNED_COLOUR, KEPT_COLOUR]), vmin=0,
                vmax=1, edgecolors="white", linewidth=3, antialiased=False)
  ax.set_xlim(0, length)
  ax.set_ylim(layers, 0)  # layer 1 on top
  ax.set_xticks(np.arange(length) + 0.5, list(tokens), rotation=90, fontsize=8)
  ax.set_yticks(np.arange(layers) + 0.5, [f"layer {i + 1}" for i in range(layers)],
                fontsize=8)
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)
  ax.set_title(title or f"{kept[-1].sum()} of {length} tokens reach the last layer",
               fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def _token_span(token: str, depth: int, layers: int) -> str:
  """A token coloured by how many layers it survived (0: pruned at layer 1)."""
  mix = depth / max(layers, 1)
  pruned, kept = mcolors.to_rgb(PRUNED_COLOUR), mcolors.to_rgb(KEPT_COLOUR)
  colour = mcolors.to_hex([p + mix * (k - p) for p, k in zip(pruned, kept)])
  tip = "kept by every layer" if depth == layers else f"pruned at layer {depth + 1}"
  return (f'<span class="tok" style="background:{colour}" title="{tip}">'
          f"{html.escape(token)}</span>")


def survival_html(items: Sequence[dict], path: Optional[str] = None,
                  title: str = "tpjax: which tokens each layer kept") -> str:
  """Writes token survival as coloured text and a per-layer grid, one page.

  Args:
    items: Dicts with 'tokens' (length T), 'kept' (<bool>[layers, T]) and an
      optional 'caption' (e.g. the input and its prediction).
    path: HTML file to write, or None.
    title: Page title.

  Returns:
    The HTML text: one <section> per item, each with the coloured tokens (darker
    green = kept by more layers) and a table with one row per layer.
  """
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{html.escape(title)}</title>",
      "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}"
      ".tok{padding:1px 3px;margin:1px;border-radius:3px;display:inline-block}"
      "table{border-collapse:separate;border-spacing:2px;font-size:80%}"
      f"td.k{{background:{KEPT_COLOUR}}}td.p{{background:{PRUNED_COLOUR}}}"
      "td{min-width:1.2em;height:1em}th{text-align:right;font-weight:normal}"
      "</style></head><body>", f"<h1>{html.escape(title)}</h1>",
      "<p>Colour: how many layers kept the token (pink: pruned at layer 1, green: "
      "kept to the end). Grid: one row per layer, green = still present.</p>"]
  for item in items:
    tokens, kept = item["tokens"], np.asarray(item["kept"], bool)
    depth = kept.sum(axis=0) if kept.size else np.zeros(len(tokens), int)
    # A token pruned at layer l is absent from every later layer (cumulative), so
    # the number of layers that kept it is its survival depth.
    parts.append("<section>")
    if item.get("caption"):
      parts.append(f"<h2>{html.escape(item['caption'])}</h2>")
    parts.append("<p>" + " ".join(_token_span(t, int(d), len(kept))
                                  for t, d in zip(tokens, depth)) + "</p>")
    parts.append("<table><tr><th></th>" + "".join(
        f"<th>{html.escape(t)}</th>" for t in tokens) + "</tr>")
    for layer, row in enumerate(kept):
      cells = "".join(f'<td class="{"k" if k else "p"}"></td>' for k in row)
      parts.append(f'<tr class="layer"><th>layer {layer + 1}</th>{cells}</tr>')
    parts.append("</table></section>")
  parts.append("</body></html>")
  text = "\n".join(parts)
  if path:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  return text


def pareto_plot(points: Sequence[result_files.Point], title: str = "",
                path: Optional[str] = None) -> mfigure.Figure:
  """Accuracy versus relative FLOPs for every point, and their Pareto front.

  Args:
    points: `result_files.Point`s (e.g. `result_files.accuracy_points()`).
    title: Figure title.
    path: PNG file to write, or None.

  Returns:
    The figure: one marker style per series, the front as a grey step line; a
    series whose checkpoints or settings were chosen on dev says so in the legend.
  """
  fig = _figure(6.4, 4.4)
  ax = fig.add_subplot()
  series = list(dict.fromkeys(p.series for p in points))
  markers = "os^Dv<>Ph*"
  for i, name in enumerate(series):
    group = sorted((p for p in points if p.series == name),
                   key=lambda p: p.relative_flops)
    ax.plot([p.relative_flops for p in group], [100 * p.accuracy for p in group],
            marker=markers[i % len(markers)], ls="-" if len(group) > 1 else "",
            color=f"C{i}", label=name + (", chosen on dev" if any(
                p.selected_on != selection.SPLIT for p in group) else ""))
    for p in group:
      if p.label:
        ax.annotate(p.label, (p.relative_flops, 100 * p.accuracy), fontsize=7,
                    textcoords="offset points", xytext=(4, -9))
  front = result_files.pareto_front(points)
  if front:
    ax.step([p.relative_flops for p in front], [100 * p.accuracy for p in front],
            where="post", color="black", alpha=0.35, lw=4, zorder=0,
            label="Pareto front")
  ax.set_xlabel("relative FLOPs (real lengths)")
  ax.set_ylabel("dev accuracy (%)")
  ax.set_title(title or "accuracy versus FLOPs", fontsize=10)
  ax.grid(alpha=0.3)
  if points:
    ax.legend(fontsize=7, loc="lower right")
  else:  # a baseline nothing has been measured against yet
    ax.text(0.5, 0.5, "no point measured against this baseline yet",
            transform=ax.transAxes, ha="center", fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def throughput_plot(benchmarks: Sequence[dict], path: Optional[str] = None
                   ) -> mfigure.Figure:
  """Throughput and batch-1 latency of every system of every benchmark.

  Args:
    benchmarks: `tpjax.benchmark` results (e.g. `result_files.inference_results()`).
    path: PNG file to write, or None.

  Returns:
    The figure: one row of two panels (examples/s; p50 latency in ms) per
    benchmark, one horizontal bar per system in SYSTEM_COLOURS, no legend.
  """
  bars = [len(b["systems"]) for b in benchmarks]
  fig = _figure(9.0, 0.3 * sum(bars) + 0.9 * len(benchmarks) + 0.6)
  if not benchmarks:
    return _save(fig, path)
  axes = fig.subplots(len(benchmarks), 2, squeeze=False,
                      gridspec_kw={"height_ratios": bars})
  for row, bench in zip(axes, benchmarks):
    names = list(bench["systems"])
    y = np.arange(len(names))
    for ax, key, label in ((row[0], "examples_per_s", "examples/s (batch "
                            f"{bench.get('batch_size', '?')})"),
                           (row[1], "latency_p50_ms", "p50 latency, batch 1 (ms)")):
      values = [bench["systems"][n][key] for n in names]
      ax.barh(y, values, height=0.7, antialiased=False,
              color=[SYSTEM_COLOURS.get(n, "#495057") for n in names])
      ax.set_yticks(y, [result_files.system_name(n, bench) for n in names], fontsize=7)
      ax.set_ylim(len(names) - 0.5, -0.5)
      ax.set_xlabel(label, fontsize=8)
      ax.tick_params(axis="x", labelsize=7)
      ax.grid(axis="x", alpha=0.3)
      ax.set_axisbelow(True)  # grid lines behind the bars, not across them
    row[1].set_yticklabels([])
    row[0].set_title(result_files.describe_inference(bench), fontsize=8, loc="left")
  fig.tight_layout()
  return _save(fig, path)
