"""Inference that removes pruned tokens for real: one compiled call per batch shape.

Layout (docs/engine.md has the picture and the measurements behind it). A batch
<int32>[B, S0] (right-padded; the engine pads it to S0 in its input grid and B in
`padded_rows`) runs through one jitted function.
The hidden states live *packed*: the live tokens of the whole batch back to back,
row b's at start[b] .. start[b] + count[b] - 1, so that row slot j of row b is packed
token start[b] + j and a row's tokens are always the first count[b] slots of its row.

  embed; pack the real tokens; QKV of layer 0        packed [N, ...]
  for every layer l:
    attention at the narrowest width w that holds    rows   [B, w, ...] (gathered)
      the longest row; attention received per key
    the method's keep decision                       rows   (prune_fn's layout)
    compaction: kept tokens packed again, in order   packed (one gather)
    output dense + residual + LayerNorm, FFN of l,   packed, kept tokens only
      QKV of l + 1
  head on each row's [CLS]

(A method whose decision reads the post-attention state, `keep_reads_hidden`, gets
the output dense on every live token before it decides, then the FFN pass.)

Packed work runs in a `fori_loop` over chunks whose trip count is the number of
tokens being processed (full chunks, then the rest in small chunks), so every dense
matmul (QKV, output dense, FFN: all of a layer's weight FLOPs) is paid per kept token
plus less than one small chunk, not per row x longest row. Inputs of at most one
chunk (e.g. batch 1) run each block as one piece instead, of the smallest of a few
sizes that holds it (`block_sizes`), because there a matmul's cost is mostly reading
the weights. Loop counts and sizes are chosen on device: a batch costs one dispatch
and one transfer back, and each input shape compiles once. Without a method (or
`prune=False`) the engine runs the plain padded forward: on length-sorted batches
that is the fastest unpruned path, so it is the baseline.
"""

import functools
import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import encoder as encoder_lib
from tpjax.models import precision
from tpjax.pruning import base


def row_of(packed: jax.Array, end: jax.Array) -> jax.Array:
  """The row of every packed index, for rows whose tokens end at `end` <int32>[B]."""
  return jnp.minimum(jnp.searchsorted(end, packed, side="right"), end.shape[0] - 1)


def compaction(keep: jax.Array, start: jax.Array, span: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """Where each kept token comes from when a packed batch drops the others.

  Packed order is row-major: row b's tokens sit at start[b], start[b] + 1, ... in
  their row slot order. Row slot j of row b is packed token start[b] + j.

  Args:
    keep: <bool>[B, S] over row slots (only live slots may be kept).
    start: <int32>[B] where each row starts in the current packed layout.
    span: length of the new packed index.
  Returns:
    source <int32>[span]: current packed index of new packed token p (entries past
      the kept total point at some valid token and are ignored);
    slot <int32>[span]: its flat row-layout index, b * S + row slot;
    order <int32>[B, S]: the stable reordering that moves each row's kept slots first;
    new_start <int32>[B], total <int32>[]: the new layout.
  """
  rows, seq = keep.shape
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  end = jnp.cumsum(kept)
  new_start = end - kept
  order = jnp.argsort(~keep, axis=-1, stable=True)          # kept slots first
  p = jnp.arange(span, dtype=jnp.int32)
  row = row_of(p, end)
  j = order[row, jnp.clip(p - new_start[row], 0, seq - 1)]
  source = jnp.minimum(start[row] + j, span - 1)
  return source, row * seq + j, order, new_start, end[-1]


def flat_slots(start: jax.Array, count: jax.Array, seq: int, span: int) -> jax.Array:
  """<int32>[span]: the flat row-layout index (b * seq + j) of every packed token, for
  rows whose tokens fill their first count[b] slots and start at start[b] when packed
  (entries past the total point at some valid slot and are ignored)."""
  p = jnp.arange(span, dtype=jnp.int32)
  row = row_of(p, start + count)
  return row * seq + jnp.clip(p - start[row], 0, seq - 1)


def row_view(packed: jax.Array, start: jax.Array, count: jax.Array, seq: int) -> jax.Array:
  """<float32>[N, d] packed -> [B, seq, d] rows, each row's tokens first, zeros after."""
  slot = jnp.arange(seq, dtype=jnp.int32)[None, :]
  index = jnp.where(slot < count[:, None], start[:, None] + slot, packed.shape[0])
  return jnp.take(packed, index, axis=0, mode="fill", fill_value=0)


def block_sizes(n: int) -> tuple[int, ...]:
  """Sizes a block of at most n tokens is rounded up to when it runs as one piece:
  1/8, 1/4, 3/8, 1/2, 3/4 and all of n, rounded up to multiples of 8 (ascending, the
  last is n)."""
  return tuple(sorted({min(n, -(-n * k // 64) * 8) for k in (1, 2, 3, 4, 6, 8)}))


def inference_buckets(max_length: int) -> tuple[int, ...]:
  """Input lengths the engine pads a batch to: multiples of 8 up to 64, then four per
  doubling (80, 96, 112, 128, 160, ...), ending at max_length. The unpruned forward
  pays for every padded position, so training's coarse buckets (RTE: 64 to 256 in 5
  steps) would cost it up to 2x; this grid pads an input by at most 8 tokens or 25%,
  at one compiled function per length used."""
  out, length = [], 8
  while length < max_length:
    out.append(length)
    length += 8 if length < 64 else 2 ** (length.bit_length() - 3)
  return tuple(out) + (max_length,)


def input_bucket(buckets: Sequence[int], longest: int) -> int:
  """The smallest of the ascending `buckets` that holds `longest` tokens."""
  for b in buckets:
    if b >= longest:
      return b
  raise ValueError(f"{longest} tokens exceed the largest bucket {buckets[-1]}.")


def padded_rows(rows: int) -> int:
  """Rows a batch is padded to: 1, 2, 4, then multiples of 8, so a partial batch
  computes few filler rows and batch sizes share compiled functions."""
  return rows if rows <= 2 else 4 if rows <= 4 else -(-rows // 8) * 8


def padded_shape(buckets: Sequence[int], rows: int, longest: int) -> tuple[int, int]:
  """The [rows, length] the engine runs a batch of `rows` examples at, the longest of
  `longest` tokens."""
  return padded_rows(rows), input_bucket(buckets, max(longest, 1))


def _layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
  return nn.LayerNorm(epsilon=eps).apply({"params": p}, x)


def _dense(p: dict, x: jax.Array, dtype: str) -> jax.Array:
  return precision.matmul(x, p["kernel"], dtype) + p["bias"]


def fuse_layers(model_params: dict, num_layers: int) -> list[dict]:
  """Per layer: {'qkv': fused [hidden, 3 hidden] dense, 'attn_out', 'attn_norm',
  'ffn_in', 'ffn_out', 'ffn_norm'}; built once so no call concatenates weights (the
  kernels keep the dtype they are stored in)."""
  out = []
  for i in range(num_layers):
    p = model_params["encoder"]["layer"][str(i)]
    att = p["attention"]["self"]
    out.append({
        "qkv": {"kernel": jnp.concatenate([att[n]["kernel"] for n in ("query", "key",
                                                                      "value")], 1),
                "bias": jnp.concatenate([att[n]["bias"] for n in ("query", "key",
                                                                  "value")])},
        "attn_out": p["attention"]["output"]["dense"],
        "attn_norm": p["attention"]["output"]["LayerNorm"],
        "ffn_in": p["intermediate"]["dense"],
        "ffn_out": p["output"]["dense"],
        "ffn_norm": p["output"]["LayerNorm"],
    })
  return out


class Engine:
  """Runs a trained encoder with real token removal.

  Args:
    model: the EncoderModel (with a head).
    params: {'model': ..., 'pruning': ...}.
    method: the pruning method; None or `base.Method()` disables pruning.
    buckets: allowed input lengths, ascending; the last is the longest input.
    prune: False runs the method-free path even if a method is given.
    chunk: packed tokens per loop step; inputs of at most one chunk (e.g. batch 1)
      run each block as one piece instead, of a size from `block_sizes`.
    small_chunk: tokens per step of the loop that runs what is left after the full
      chunks, so padding stays under small_chunk tokens per block.
  """

  def __init__(self, model: encoder_lib.EncoderModel, params: dict,
               method: Optional[base.Method], buckets: Sequence[int], prune: bool = True,
               chunk: int = 256, small_chunk: int = 32):
    self.model = model
    self.params = params
    self.buckets = tuple(sorted(buckets))
    self.num_layers = model.config.num_hidden_layers
    self.chunk = chunk
    self.small_chunk = small_chunk = min(small_chunk, chunk)
    if small_chunk < 1 or chunk % small_chunk:
      raise ValueError(f"chunk={chunk} must be a positive multiple of small_chunk="
                       f"{small_chunk}.")
    self.method = method if (method is not None and prune and
                             method.prune_fn(params["pruning"], "hard") is not None) else None
    # Dense kernels stored in the compute dtype: read at half the bytes, never cast.
    self.weights = {"model": precision.cast_kernels(params["model"],
                                                    model.config.compute_dtype),
                    "pruning": params["pruning"]}
    if self.method:  # the packed path's fused weights; the dense path reads the model's
      self.weights["layers"] = fuse_layers(self.weights["model"], self.num_layers)
    self._forward = jax.jit(self._run if self.method else self._run_dense,
                            static_argnames=("with_positions",))
    self.compile_seconds: dict[tuple[int, int], float] = {}

  # ---------------------------------------------------------------- compiled part

  def _small(self, rows: int, seq: int) -> bool:
    """Inputs of at most one chunk (e.g. batch 1) run each block as one piece: at a
    few dozen tokens a matmul costs about the same for 8 rows as for 32 (the weights
    are read either way), so splitting a block would cost more than its padding."""
    return rows * seq <= self.chunk

  def _span(self, rows: int, seq: int) -> int:
    """Length of every packed array: rows x seq, rounded up to a chunk for loops."""
    if self._small(rows, seq):
      return rows * seq
    return -(-rows * seq // self.chunk) * self.chunk

  def _loop(self, total, fn, gathered, sliced, into, rows, seq):
    """Runs the per-token `fn` on the first `total` packed tokens.

    Args:
      total: <int32>[] tokens to run (a device value: it sets the trip counts).
      fn: tuple of [c, d_i] -> tuple of [c, e_j].
      gathered: (array [M, d], source <int32>[span]) pairs: input i of packed token p
        is array[source[p]].
      sliced: packed arrays [span, d], read in place.
      into: arrays [span, e_j] no longer needed, written over (a fresh zero buffer
        would cost a fill and a copy into the loop per call).
    Returns:
      tuple of <float32>[span, e_j]; rows past `total` hold junk.
    """
    def step(size, offset):
      def body(i, outs):
        at = offset + i * size
        xs = [jnp.take(x, jax.lax.dynamic_slice(src, (at,), (size,)), axis=0,
                       mode="clip") for x, src in gathered]
        xs += [jax.lax.dynamic_slice(x, (at, 0), (size, x.shape[1])) for x in sliced]
        return tuple(jax.lax.dynamic_update_slice(o, y, (at, 0))
                     for o, y in zip(outs, fn(*xs)))
      return body

    outs = tuple(into)
    if self._small(rows, seq):
      # One piece, of the smallest block size that holds `total`.
      sizes = block_sizes(self._span(rows, seq))
      return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), total),
                            [functools.partial(step(size, 0), 0) for size in sizes], outs)
    # Trip counts are data, not shape: full chunks, then the rest in small ones, so the
    # work past `total` is under one small chunk.
    full = total // self.chunk
    outs = jax.lax.fori_loop(0, full, step(self.chunk, 0), outs)
    rest = (total - full * self.chunk + self.small_chunk - 1) // self.small_chunk
    return jax.lax.fori_loop(0, rest, step(self.small_chunk, full * self.chunk), outs)

  def _run(self, weights, input_ids, attention_mask, token_type_ids, *, with_positions):
    cfg = self.model.config
    rows, seq = input_ids.shape
    width, heads = cfg.hidden_size, cfg.num_attention_heads
    eps, dtype = cfg.layer_norm_eps, cfg.compute_dtype
    act = encoder_lib._activation(cfg)  # pylint: disable=protected-access
    layers = weights["layers"]
    prune_fn = self.method.prune_fn(weights["pruning"], "hard")
    span = self._span(rows, seq)
    loop = lambda *a: self._loop(*a, rows, seq)

    hidden = self.model.apply({"params": weights["model"]}, input_ids, attention_mask,
                              token_type_ids, method=lambda m, *a: m.embed(*a))
    mask = attention_mask.astype(jnp.float32)
    lengths = jnp.sum(attention_mask > 0, axis=-1).astype(jnp.int32)
    protected = encoder_lib.protected_tokens(attention_mask, token_type_ids)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (rows, seq))

    def attention_at(w):
      """Per-example attention on the first w row slots (the live ones):
      packed qkv -> context <float32>[B, S, width], received <float32>[B, S]."""
      def fn(qkv, start, count, mask):
        split = lambda x: x.reshape(rows, w, heads, width // heads)
        qkv_rows = row_view(qkv, start, count, w)
        q, k, v = (split(qkv_rows[..., i * width:(i + 1) * width]) for i in range(3))
        heads_first = encoder_lib.heads_first
        logits = precision.matmul(heads_first(q), k.transpose(0, 2, 3, 1), dtype) / jnp.sqrt(
            width // heads).astype(jnp.float32)
        probs = jax.nn.softmax(logits + encoder_lib.key_bias(mask[:, :w]), axis=-1)
        context = heads_first(precision.matmul(probs, heads_first(v), dtype)).reshape(
            rows, w, width)
        received = encoder_lib.attention_received(probs, mask[:, :w])
        return (jnp.pad(context, ((0, 0), (0, seq - w), (0, 0))),
                jnp.pad(received, ((0, 0), (0, seq - w))))
      return fn

    # Rows hold their live tokens first, so attention runs at the narrowest width that
    # holds the longest row: its score work shrinks with pruning as the dense work does.
    widths = block_sizes(seq)
    attention = [attention_at(w) for w in widths]

    def attention_output(p):
      return lambda context, h: (_layer_norm(p["attn_norm"],
                                             _dense(p["attn_out"], context, dtype) + h, eps),)

    def feed_forward(layer, attend=False):
      """[attention output of `layer`,] FFN of `layer` (none for -1), then the next
      layer's QKV."""
      def fn(*x):
        if attend:
          x = attention_output(layers[layer])(*x)
        (x,) = x
        if layer >= 0:
          p = layers[layer]
          x = _layer_norm(p["ffn_norm"], _dense(p["ffn_out"], act(_dense(p["ffn_in"], x,
                                                                         dtype)), dtype)
                          + x, eps)
        if layer + 1 == len(layers):
          return (x,)
        return x, _dense(layers[layer + 1]["qkv"], x, dtype)
      return fn

    # Packed layout: row b's live tokens at start[b] .. start[b] + count[b] - 1. Rows
    # are right-padded, so entering it is a compaction of the flat rows.
    count = lengths
    start = jnp.cumsum(count) - count
    total = jnp.sum(count)
    h, qkv, out = (jnp.zeros((span, w), hidden.dtype) for w in (width, 3 * width, width))
    h, qkv = loop(total, feed_forward(-1),
                  [(hidden.reshape(rows * seq, width), flat_slots(start, count, seq, span))],
                  [], (h, qkv))
    kept, kept_positions = [], []
    for layer in range(self.num_layers):
      last = layer + 1 == self.num_layers
      narrowest = jnp.searchsorted(jnp.asarray(widths), jnp.max(count))
      context, received = jax.lax.switch(narrowest, attention, qkv, start, count, mask)
      context = context.reshape(rows * seq, width)
      hidden_rows = None
      if self.method.keep_reads_hidden:  # the post-attention state of every live token
        (out,) = loop(total, attention_output(layers[layer]),
                      [(context, flat_slots(start, count, seq, span))], [h], (out,))
        hidden_rows = row_view(out, start, count, seq)
      new, scale, _ = prune_fn(layer, received, mask, hidden_rows, lengths, protected)
      if scale is not None:
        raise ValueError("The engine runs hard keep decisions; this method's prune_fn "
                         "returned an output scale.")
      keep = new > 0
      count = jnp.sum(keep, axis=-1, dtype=jnp.int32)
      kept.append(count)
      if with_positions:
        full = jnp.zeros((rows, seq), bool).at[jnp.arange(rows)[:, None], positions].set(keep)
        kept_positions.append(full)
      source, slot, order, start, total = compaction(keep, start, span)
      mask, positions, protected = (jnp.take_along_axis(x, order, axis=1)
                                    for x in (new, positions, protected))
      if self.method.keep_reads_hidden:
        outs = loop(total, feed_forward(layer), [(out, source)], [],
                    (h,) if last else (h, qkv))
        h = outs[0]
      else:
        # Decided before the attention output dense: it, the FFN and the next QKV run
        # on the kept tokens only, in one pass (out and h swap roles).
        outs = loop(total, feed_forward(layer, attend=True),
                    [(context, slot), (h, source)], [], (out,) if last else (out, qkv))
        h, out = outs[0], h
      qkv = None if last else outs[1]
    # [CLS] is kept, first in its row (clip: a filler row with no tokens reads junk)
    cls = jnp.take(h, start, axis=0, mode="clip")[:, None, :]
    logits = self.model.apply({"params": weights["model"]}, cls,
                              method=lambda m, h: m.head(h))
    result = {"logits": logits, "kept": jnp.stack(kept, -1)}
    if with_positions:
      result["kept_positions"] = jnp.stack(kept_positions)
    return result

  def _run_dense(self, weights, input_ids, attention_mask, token_type_ids, *,
                 with_positions):
    """Without keep decisions: the plain padded forward. Packing would only remove
    padding, and its gathers and loop steps cost more than that saves on
    length-sorted batches (docs/engine.md), so the unpruned baseline is this."""
    rows, seq = input_ids.shape
    logits = self.model.apply({"params": weights["model"]}, input_ids, attention_mask,
                              token_type_ids).logits
    live = attention_mask > 0
    kept = jnp.sum(live, axis=-1, dtype=jnp.int32)
    result = {"logits": logits,
              "kept": jnp.broadcast_to(kept[:, None], (rows, self.num_layers))}
    if with_positions:
      result["kept_positions"] = jnp.broadcast_to(live, (self.num_layers, rows, seq))
    return result

  # ------------------------------------------------------------------------- run

  def bucket_for(self, count: int) -> int:
    return input_bucket(self.buckets, count)

  def __call__(self, batch: dict[str, np.ndarray], return_kept_positions: bool = False
               ) -> dict[str, np.ndarray]:
    """Logits and tokens kept per layer for one right-padded batch of any shape.

    The batch is padded (or its padding columns cut) to the smallest input bucket
    that holds its longest example, and its rows to `padded_rows`, so the compiled
    function depends on the bucket, not on how the caller padded.

    Args:
      batch: input_ids, attention_mask, token_type_ids <int32>[batch, seq].
      return_kept_positions: also return, per layer, <bool>[batch, seq] over the
        original positions.
    Returns:
      logits <float32>[batch, labels]; kept <int32>[batch, layers];
      optionally kept_positions <bool>[layers, batch, seq].
    """
    mask = np.asarray(batch["attention_mask"])
    rows, seq = mask.shape
    lengths = (mask > 0).sum(-1)
    if rows == 0 or ((mask > 0) != (np.arange(seq) < lengths[:, None])).any():
      raise ValueError("The engine takes a non-empty batch of right-padded rows "
                       "(attention_mask 1 then 0 in every row).")
    fill_rows, length = padded_shape(self.buckets, rows, int(lengths.max()))
    inputs = []
    for key, pad in (("input_ids", self.model.config.pad_token_id),
                     ("attention_mask", 0), ("token_type_ids", 0)):
      x = np.full((fill_rows, length), pad, np.int32)
      x[:rows, :min(seq, length)] = np.asarray(batch[key])[:, :length]
      inputs.append(x)
    start = time.perf_counter()
    out = self._forward(self.weights, *inputs, with_positions=return_kept_positions)
    out = jax.device_get(out)  # the one transfer back
    key = (inputs[0].shape, return_kept_positions)
    if key not in self.compile_seconds:
      self.compile_seconds[key] = time.perf_counter() - start
    result = {"logits": out["logits"][:rows], "kept": out["kept"][:rows]}
    if return_kept_positions:
      positions = np.zeros((self.num_layers, rows, seq), bool)
      positions[..., :min(seq, length)] = out["kept_positions"][:, :rows, :seq]
      result["kept_positions"] = positions
    return result

  @property
  def compiled_functions(self) -> int:
    """How many input shapes have been compiled (one function each)."""
    return self._forward._cache_size()  # pylint: disable=protected-access

  def warm_up(self, batch_size: int) -> int:
    """Compiles the function for every input bucket at `batch_size` rows.

    Returns:
      The number of compiled functions afterwards.
    """
    for length in self.buckets:
      ids = np.ones((batch_size, length), np.int32)
      self({"input_ids": ids, "attention_mask": ids, "token_type_ids": 0 * ids})
    return self.compiled_functions
