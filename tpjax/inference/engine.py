"""Inference that removes pruned tokens for real: one compiled call per batch shape.

Layout (docs/engine.md has the picture and the measurements behind it). A batch
<int32>[B, S0] (right-padded, S0 an input bucket) runs through one jitted function:

  embed                                        rows   [B, S0, hidden]
  pack the real tokens; QKV of layer 0         packed [chunks x C, hidden]
  for every layer l:
    attention scores, softmax, context         rows   [B, S0, heads, ...]
    pack live tokens; output dense, LayerNorm  packed
    the method's keep decision                 rows   (prune_fn's layout)
    compaction: each row's kept tokens move to its front, in order
    pack kept tokens; FFN of l, QKV of l + 1   packed
  head on [CLS]

Packed work runs in a `fori_loop` over chunks of C tokens whose trip count is the
number of tokens being processed, so every dense matmul (QKV, output dense, FFN:
all of a layer's weight FLOPs) is paid per kept token rounded up to C, not per row x
longest row, and the loop count is decided on device: a batch costs one dispatch and
one transfer back, and each input shape compiles once. Per-example work (attention
scores, the keep decision) stays in the row layout the method's `prune_fn` expects.
Without a method (or `prune=False`) the engine runs the plain padded forward: on
length-sorted batches that is faster than packing away the padding, so the unpruned
baseline is the fastest unpruned path, not a slowed-down one.
"""

import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base


def pack_indices(keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Where each kept token goes in the packed layout, and back.

  Packed order is row-major over kept tokens, each row's in its original slot order.

  Args:
    keep: <bool>[B, S].
  Returns:
    source <int32>[B*S]: flat row-layout index of packed token p (p < total; later
      entries point at some valid slot and are ignored);
    dest <int32>[B, S]: packed index of row b's j-th kept token, B*S where j is past
      the row's kept count (reads as zero with mode='fill');
    total <int32>[]: kept tokens in the batch.
  """
  rows, seq = keep.shape
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  end = jnp.cumsum(kept)
  start = end - kept
  order = jnp.argsort(~keep, axis=-1, stable=True)          # kept slots first
  p = jnp.arange(rows * seq, dtype=jnp.int32)
  row = jnp.minimum(jnp.sum(p[:, None] >= end[None, :], axis=1), rows - 1)
  j = jnp.clip(p - start[row], 0, seq - 1)
  source = row * seq + order[row, j]
  slot = jnp.arange(seq, dtype=jnp.int32)[None, :]
  dest = jnp.where(slot < kept[:, None], start[:, None] + slot, rows * seq)
  return source, dest, end[-1]


def _layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
  return nn.LayerNorm(epsilon=eps).apply({"params": p}, x)


def _dense(p: dict, x: jax.Array) -> jax.Array:
  return x @ p["kernel"] + p["bias"]


def fuse_layers(model_params: dict, num_layers: int) -> list[dict]:
  """Per layer: {'qkv': fused [hidden, 3 hidden] dense, 'attn_out', 'attn_norm',
  'ffn_in', 'ffn_out', 'ffn_norm'}; built once so no call concatenates weights."""
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
    chunk: packed tokens per loop step.
    small_chunk: packed tokens per loop step for inputs of at most 4 x chunk tokens
      (e.g. batch 1), where a loop step's dispatch costs more than its padding.
  """

  def __init__(self, model: encoder_lib.EncoderModel, params: dict,
               method: Optional[base.Method], buckets: Sequence[int], prune: bool = True,
               chunk: int = 128, small_chunk: int = 16):
    self.model = model
    self.params = params
    self.buckets = tuple(sorted(buckets))
    self.num_layers = model.config.num_hidden_layers
    self.chunk = chunk
    self.small_chunk = small_chunk
    self.method = method if (method is not None and prune and
                             method.prune_fn(params["pruning"], "hard") is not None) else None
    self.weights = {"model": params["model"], "pruning": params["pruning"]}
    if self.method:  # the packed path's fused weights; the dense path reads the model's
      self.weights["layers"] = fuse_layers(params["model"], self.num_layers)
    self._forward = jax.jit(self._run if self.method else self._run_dense,
                            static_argnames=("with_positions",))
    self.compile_seconds: dict[tuple[int, int], float] = {}

  # ---------------------------------------------------------------- compiled part

  def _chunk(self, rows: int, seq: int) -> int:
    """Packed tokens per loop step: `chunk`, smaller for small batches."""
    return min(rows * seq, self.chunk if rows * seq > 4 * self.chunk else self.small_chunk)

  def _packed(self, keep, inputs, fn, out_widths):
    """Runs `fn` on the `keep` tokens of `inputs`, packed, and unpacks its outputs.

    Args:
      keep: <bool>[B, S] tokens to run.
      inputs: tuple of <float32>[B, S, d_i] row-layout arrays.
      fn: per-token function, tuple of [chunk, d_i] -> tuple of [chunk, out_widths_j].
      out_widths: the output feature sizes.
    Returns:
      tuple of <float32>[B, S, out_widths_j], each row's kept tokens first (in
      order), zeros after them.
    """
    rows, seq = keep.shape
    source, dest, total = pack_indices(keep)
    chunk = self._chunk(rows, seq)
    span = -(-rows * seq // chunk) * chunk
    source = jnp.pad(source, (0, span - rows * seq))
    flats = tuple(x.reshape(rows * seq, x.shape[-1]) for x in inputs)
    dtype = inputs[0].dtype

    def body(i, outs):
      idx = jax.lax.dynamic_slice(source, (i * chunk,), (chunk,))
      ys = fn(*(jnp.take(x, idx, axis=0) for x in flats))
      return tuple(jax.lax.dynamic_update_slice(o, y, (i * chunk, 0))
                   for o, y in zip(outs, ys))

    # As many chunks as the kept total needs: the trip count is data, not shape.
    outs = jax.lax.fori_loop(0, (total + chunk - 1) // chunk, body,
                             tuple(jnp.zeros((span, w), dtype) for w in out_widths))
    return tuple(jnp.take(o, dest, axis=0, mode="fill", fill_value=0) for o in outs)

  def _run(self, weights, input_ids, attention_mask, token_type_ids, *, with_positions):
    cfg = self.model.config
    rows, seq = input_ids.shape
    width, heads = cfg.hidden_size, cfg.num_attention_heads
    eps = cfg.layer_norm_eps
    act = encoder_lib._activation(cfg)  # pylint: disable=protected-access
    layers = weights["layers"]
    prune_fn = self.method.prune_fn(weights["pruning"], "hard")

    hidden = self.model.apply({"params": weights["model"]}, input_ids, attention_mask,
                              token_type_ids, method=lambda m, *a: m.embed(*a))
    mask = attention_mask.astype(jnp.float32)
    lengths = jnp.sum(attention_mask > 0, axis=-1).astype(jnp.int32)
    protected = encoder_lib.protected_tokens(attention_mask, token_type_ids)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (rows, seq))

    def attention_core(qkv, mask):
      """Per-example attention on rows: [B, S, 3 width] -> context, probs."""
      split = lambda x: x.reshape(rows, seq, heads, width // heads)
      q, k, v = (split(qkv[..., i * width:(i + 1) * width]) for i in range(3))
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(width // heads).astype(
          q.dtype)
      probs = jax.nn.softmax(logits + encoder_lib.key_bias(mask), axis=-1)
      return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(rows, seq, width), probs

    def attention_output(p):
      return lambda context, h: (_layer_norm(p["attn_norm"],
                                             _dense(p["attn_out"], context) + h, eps),)

    def feed_forward(layer):
      """FFN of `layer` (none for -1), then the next layer's QKV."""
      def fn(x):
        if layer >= 0:
          p = layers[layer]
          x = _layer_norm(p["ffn_norm"], _dense(p["ffn_out"], act(_dense(p["ffn_in"], x)))
                          + x, eps)
        if layer + 1 == len(layers):
          return (x,)
        return x, _dense(layers[layer + 1]["qkv"], x)
      return fn

    h, qkv = self._packed(mask > 0, (hidden,), feed_forward(-1), (width, 3 * width))
    kept, kept_positions = [], []
    for layer in range(self.num_layers):
      live = mask > 0
      context, probs = attention_core(qkv, mask)
      (out,) = self._packed(live, (context, h), attention_output(layers[layer]), (width,))
      new, scale, _ = prune_fn(layer, probs, mask, out, lengths, protected)
      if scale is not None:
        raise ValueError("The engine runs hard keep decisions; this method's prune_fn "
                         "returned an output scale.")
      keep = new > 0
      kept.append(jnp.sum(keep, axis=-1, dtype=jnp.int32))
      if with_positions:
        full = jnp.zeros((rows, seq), bool).at[jnp.arange(rows)[:, None], positions].set(keep)
        kept_positions.append(full)
      order = jnp.argsort(~keep, axis=-1, stable=True)
      mask, positions, protected = (jnp.take_along_axis(x, order, axis=1)
                                    for x in (new, positions, protected))
      last = layer + 1 == self.num_layers
      outs = self._packed(keep, (out,), feed_forward(layer),
                          (width,) if last else (width, 3 * width))
      h, qkv = outs if not last else (outs[0], None)
    logits = self.model.apply({"params": weights["model"]}, h,
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
    for b in self.buckets:
      if b >= count:
        return b
    raise ValueError(f"{count} tokens exceed the largest bucket {self.buckets[-1]}.")

  def __call__(self, batch: dict[str, np.ndarray], return_kept_positions: bool = False
               ) -> dict[str, np.ndarray]:
    """Logits and tokens kept per layer for one right-padded batch.

    Args:
      batch: input_ids, attention_mask, token_type_ids <int32>[batch, seq].
      return_kept_positions: also return, per layer, <bool>[batch, seq] over the
        original positions.
    Returns:
      logits <float32>[batch, labels]; kept <int32>[batch, layers];
      optionally kept_positions <bool>[layers, batch, seq].
    """
    shape = batch["input_ids"].shape
    start = time.perf_counter()
    out = self._forward(self.weights, batch["input_ids"], batch["attention_mask"],
                        batch["token_type_ids"], with_positions=return_kept_positions)
    out = jax.device_get(out)  # the one transfer back
    if (shape, return_kept_positions) not in self.compile_seconds:
      self.compile_seconds[(shape, return_kept_positions)] = time.perf_counter() - start
    return out

  @property
  def compiled_functions(self) -> int:
    """How many input shapes have been compiled (one function each)."""
    return self._forward._cache_size()  # pylint: disable=protected-access

  def warm_up(self, batch_size: int) -> int:
    """Compiles the function for every input bucket at `batch_size`.

    Returns:
      The number of compiled functions afterwards.
    """
    for length in self.buckets:
      ids = np.zeros((batch_size, length), np.int32)
      self({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids})
    return self.compiled_functions
