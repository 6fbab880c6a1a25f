"""Top-k cascade baseline (SpAtten-style schedule; methods.md section 1).

The first max(3, ceil(0.15 L)) layers keep every token; after that the keep rate falls
linearly to `keep_rate` at the last layer (floor 0.01). Layer l keeps the
round(rate_l * n) (reference) or ceil(rate_l * n) (`topk_rounding`) highest-scoring live
tokens, n the example's real length.
"""

import math

import jax
import jax.numpy as jnp

from tpjax.pruning import base
from tpjax.pruning import ltp_variant
from tpjax.pruning import scores


def keep_rates(num_layers: int, keep_rate: float, full_layers: int = 0) -> list[float]:
  """Per-layer keep rate relative to the real length.

  `full_layers` unpruned layers come first; 0 means the reference's
  max(3, ceil(0.15 L)), which leaves half of a 6-layer model unpruned.
  """
  full = full_layers or max(3, math.ceil(0.15 * num_layers))
  full = min(num_layers, full)
  rates = [1.0] * full
  remaining = num_layers - full
  for i in range(1, remaining + 1):
    rates.append(max(0.01, 1.0 - (1.0 - keep_rate) * i / remaining))
  return rates


def top_k_keep(score: jax.Array, token_mask: jax.Array, k: jax.Array) -> jax.Array:
  """Keeps each row's k highest-scoring live tokens, [CLS] first.

  Args:
    score: <float32>[batch, seq].
    token_mask: <float32>[batch, seq], live tokens > 0.
    k: <int32>[batch] tokens to keep per row.
  Returns:
    <float32>[batch, seq] in {0, 1}.
  """
  live = token_mask > 0
  ranked = jnp.where(live, score, -jnp.inf).at[:, 0].set(jnp.inf)
  order = jnp.argsort(-ranked, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  keep = (rank < k[:, None]) & live
  return scores.protect_first(keep.astype(jnp.float32), token_mask)


class TopKMethod(base.Method):
  """Hard top-k pruning with a fixed schedule; no parameters."""

  name = "topk"

  def __init__(self, config, num_layers: int):
    self.config = config
    self.rates = keep_rates(num_layers, config.keep_rate, config.topk_full_layers)
    self.rounding = ltp_variant.resolve(config)["topk_rounding"]

  def prune_fn(self, params, stage, rng=None):
    del params, rng
    if stage == "finetune":
      return None
    cfg = self.config

    def hard(index, received, token_mask, hidden, lengths, protected):
      del hidden, protected
      round_fn = jnp.round if self.rounding == "round" else jnp.ceil  # half to even
      k = round_fn(self.rates[index] * lengths).astype(jnp.int32)
      score = scores.normalized(received, token_mask, cfg.score_norm, cfg.score_norm_constant)
      return top_k_keep(score, token_mask, k), None, None

    return hard

  def metrics(self, params):
    del params
    return {"keep_rates": [round(r, 4) for r in self.rates]}
