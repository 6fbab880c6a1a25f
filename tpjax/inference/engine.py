"""Inference that removes pruned tokens for real (methods.md section 5).

A batch enters at the smallest bucket length that holds its longest example. After
each layer's attention and pruning decision, the kept tokens (original order, [CLS]
first) are gathered into the smallest bucket that holds the batch's largest kept
count, and that layer's FFN and every later layer run on the shorter array. Each
segment is compiled once per (layer, bucket in, bucket out) and cached; `warm_up`
compiles them all before anything is timed.

Without a pruning method the engine runs the whole encoder in one compiled call per
bucket (the unpruned baseline through the same bucketing).
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base


def compact(hidden: jax.Array, token_mask: jax.Array, positions: jax.Array,
            length: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Moves live tokens to the front, in order, and cuts to `length`.

  Args:
    hidden: <float32>[batch, seq, hidden].
    token_mask: <float32>[batch, seq], live > 0.
    positions: <int32>[batch, seq] each slot's original token index.
    length: the output length; must hold every row's live tokens.
  Returns:
    The same three arrays with seq = length.
  """
  order = jnp.argsort(token_mask <= 0, axis=-1, stable=True)[:, :length]
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                       axis=1)
  return take(hidden), take(token_mask), take(positions)


class Engine:
  """Runs a trained encoder with real token removal.

  Args:
    model: the EncoderModel (with a head).
    params: {'model': ..., 'pruning': ...}.
    method: the pruning method; None or `base.Method()` disables pruning.
    buckets: allowed sequence lengths, ascending; the last is the longest input.
    prune: False runs the method-free path even if a method is given.
  """

  def __init__(self, model: encoder_lib.EncoderModel, params: dict,
               method: Optional[base.Method], buckets: Sequence[int], prune: bool = True):
    self.model = model
    self.params = params
    self.buckets = tuple(sorted(buckets))
    self.num_layers = model.config.num_hidden_layers
    prune_fn = method.prune_fn(params["pruning"], "hard") if (method and prune) else None
    self.prune_fn = prune_fn
    self._first = jax.jit(functools.partial(self._first_segment, prune_fn=prune_fn))
    self._segment = jax.jit(functools.partial(self._layer_segment, prune_fn=prune_fn),
                            static_argnames=("layer", "length"))
    self._full = jax.jit(self._unpruned)

  # ---------------------------------------------------------------- compiled parts

  def _first_segment(self, params, input_ids, attention_mask, token_type_ids, *,
                     prune_fn):
    """Embeddings, layer 0's attention and pruning decision."""
    def run(module):
      hidden = module.embed(input_ids, attention_mask, token_type_ids)
      token_mask = attention_mask.astype(jnp.float32)
      lengths = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)
      protected = encoder_lib.protected_tokens(attention_mask, token_type_ids)
      hidden, probs = module.layers[0].attend(hidden, token_mask, True)
      token_mask, _, _ = prune_fn(0, probs, token_mask, hidden, lengths, protected)
      # Built here so that every segment input is a jit output: committed and
      # uncommitted arrays are separate compilation-cache entries.
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32),
                                   input_ids.shape)
      return hidden, token_mask, positions, lengths, protected
    return self.model.apply({"params": params["model"]}, method=run)

  def _layer_segment(self, params, hidden, token_mask, positions, lengths, protected, *,
                     layer: int, length: int, prune_fn):
    """Compaction to `length`, layer `layer`'s FFN, then the next layer's attention
    and decision (or the head after the last layer). `protected` stays in the
    original layout and is gathered through `positions`."""
    if length < hidden.shape[1]:
      hidden, token_mask, positions = compact(hidden, token_mask, positions, length)

    def run(module):
      h = module.layers[layer].feed_forward(hidden, True)
      if layer + 1 == self.num_layers:
        return module.head(h), token_mask, positions
      h, probs = module.layers[layer + 1].attend(h, token_mask, True)
      mask, _, _ = prune_fn(layer + 1, probs, token_mask, h, lengths,
                            jnp.take_along_axis(protected, positions, axis=1))
      return h, mask, positions
    return self.model.apply({"params": params["model"]}, method=run)

  def _unpruned(self, params, input_ids, attention_mask, token_type_ids):
    return self.model.apply({"params": params["model"]}, input_ids, attention_mask,
                            token_type_ids, deterministic=True).logits

  # ------------------------------------------------------------------------- run

  def bucket_for(self, count: int) -> int:
    for b in self.buckets:
      if b >= count:
        return b
    raise ValueError(f"{count} tokens exceed the largest bucket {self.buckets[-1]}.")

  def __call__(self, batch: dict[str, np.ndarray], return_kept_positions: bool = False
               ) -> dict[str, np.ndarray]:
    """Logits and tokens kept per layer for one padded batch.

    Args:
      batch: input_ids, attention_mask, token_type_ids <int32>[batch, seq], seq a bucket.
      return_kept_positions: also return, per layer, <bool>[batch, seq] over the
        original positions.
    Returns:
      logits <float32>[batch, labels]; kept <int32>[batch, layers];
      optionally kept_positions <bool>[layers, batch, seq].
    """
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    if self.prune_fn is None:
      logits = self._full(self.params, ids, mask, types)
      lengths = mask.sum(-1).astype(np.int32)
      out = {"logits": np.asarray(logits),
             "kept": np.repeat(lengths[:, None], self.num_layers, axis=1)}
      if return_kept_positions:
        out["kept_positions"] = np.repeat(mask[None].astype(bool), self.num_layers, 0)
      return out
    hidden, token_mask, positions, lengths, protected = self._first(self.params, ids, mask,
                                                                    types)
    kept, kept_positions = [], []
    for layer in range(self.num_layers):
      live = np.asarray(token_mask) > 0  # the one host sync per layer: picks the bucket
      kept.append(live.sum(-1))
      if return_kept_positions:
        full = np.zeros(ids.shape, bool)
        np.put_along_axis(full, np.asarray(positions), live, axis=1)
        kept_positions.append(full & (mask > 0))
      length = min(self.bucket_for(int(kept[-1].max())), hidden.shape[1])
      hidden, token_mask, positions = self._segment(
          self.params, hidden, token_mask, positions, lengths, protected, layer=layer,
          length=length)
    out = {"logits": np.asarray(hidden), "kept": np.stack(kept, -1).astype(np.int32)}
    if return_kept_positions:
      out["kept_positions"] = np.stack(kept_positions)
    return out

  def warm_up(self, batch_size: int) -> int:
    """Runs every segment once for every bucket (pair), so timed work never compiles.

    Returns:
      The number of (segment, shape) combinations run.
    """
    count = 0
    for s_in in self.buckets:
      ids = np.zeros((batch_size, s_in), np.int32)
      ones = np.ones_like(ids)
      if self.prune_fn is None:
        jax.block_until_ready(self._full(self.params, ids, ones, ids))
        count += 1
        continue
      hidden, mask, positions, lengths, protected = self._first(self.params, ids, ones, ids)
      count += 1
      for s_out in (b for b in self.buckets if b <= s_in):
        for layer in range(self.num_layers):
          jax.block_until_ready(self._segment(self.params, hidden, mask, positions,
                                              lengths, protected, layer=layer,
                                              length=s_out))
          count += 1
    return count
