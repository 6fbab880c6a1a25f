"""Attention-received token importance (methods.md section 0).

    s(j) = 1 / (H * Z) * sum_h sum_{i live} A_h[i, j]

Z does not depend on padding or bucket length: a constant ('fixed', default 128, the
LTP reference's scale) or the number of live tokens ('live').
"""

import jax
import jax.numpy as jnp

from tpjax.models import encoder

SCORE_NORMS = ("fixed", "live")


def importance(probs: jax.Array, token_mask: jax.Array, norm: str = "fixed",
               constant: float = 128.0) -> jax.Array:
  """Attention each token receives from the live query rows, normalised.

  Args:
    probs: <float32>[batch, heads, seq, seq] attention probabilities (query, key).
    token_mask: <float32>[batch, seq] live weight per token (0 padding/pruned; soft
      values weight their query row).
    norm: 'fixed' (divide by `constant`) or 'live' (by the live token count).
    constant: Z for 'fixed'.
  Returns:
    <float32>[batch, seq]; 0 for dead tokens.
  """
  return normalized(encoder.attention_received(probs, token_mask), token_mask, norm,
                    constant)


def normalized(received: jax.Array, token_mask: jax.Array, norm: str = "fixed",
               constant: float = 128.0) -> jax.Array:
  """`importance` from `encoder.attention_received` <float32>[batch, seq] (what the
  encoder's prune_fn hook gets)."""
  if norm not in SCORE_NORMS:
    raise ValueError(f"score norm {norm!r} is not one of {SCORE_NORMS}.")
  if norm == "fixed":
    z = jnp.asarray(constant, received.dtype)
  else:
    z = jnp.maximum(jnp.sum(token_mask, axis=-1, keepdims=True), 1.0)
  return jnp.where(token_mask > 0, received / z, 0.0)


def protect_first(keep: jax.Array, token_mask: jax.Array) -> jax.Array:
  """Forces [CLS] (position 0) kept and padding dropped: [batch, seq] -> same."""
  keep = keep.at[:, 0].set(1.0)
  return jnp.where(token_mask > 0, keep, 0.0)
