"""Learned Token Pruning (Kim et al., KDD 2022; methods.md section 1).

Each layer l has a threshold theta_l = final_threshold * l / L + delta_l with a
learnable delta_l; layer 0 keeps theta = 0 and never prunes (as in the reference) unless
`first_layer_prunes`. Soft stage: m_l = sigmoid((s_l - theta_l) / T), penalised by
lambda * sum_l of the masks' normalised sums over real tokens. Hard stage:
keep_l = s_l >= max(theta_l, floor), and pruned tokens stay pruned in every later layer.
Where tpjax may depart from the reference is listed in `ltp_variant`.
"""

import jax
import jax.numpy as jnp

from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base
from tpjax.pruning import ltp_variant
from tpjax.pruning import scores


def threshold_schedule(final_threshold: float, num_layers: int) -> jax.Array:
  """Initial thresholds, linear in depth from 0: <float32>[layers]."""
  return final_threshold * jnp.arange(num_layers, dtype=jnp.float32) / num_layers


def soft_mask(score: jax.Array, threshold: jax.Array, temperature: float) -> jax.Array:
  """sigmoid((s - theta) / T): [batch, seq] -> [batch, seq]."""
  return jax.nn.sigmoid((score - threshold) / temperature)


def hard_keep(score: jax.Array, threshold: jax.Array, token_mask: jax.Array) -> jax.Array:
  """1 where s >= theta and the token is still live, [CLS] always: -> <float32>[b, s]."""
  keep = (score >= threshold).astype(jnp.float32)
  return scores.protect_first(keep, token_mask)


def mask_regularizer(masks: tuple, attention_mask: jax.Array,
                     norm: str = "live", constant: float = 128.0) -> jax.Array:
  """Sum over layers of each mask's sum over real tokens, normalised, per example.

  Args:
    masks: per layer <float32>[batch, seq], or None for a layer that does not prune.
    attention_mask: [batch, seq], 1 for real tokens.
    norm: 'live' (divide by the number of real tokens) or 'fixed' (by `constant`, the
      LTP reference's mean over its 128 padded positions).
    constant: the divisor for 'fixed'.
  Returns:
    <float32>[batch].
  """
  real = attention_mask.astype(jnp.float32)
  if norm == "fixed":
    count = jnp.full(real.shape[:1], constant, jnp.float32)
  else:
    count = jnp.maximum(jnp.sum(real, axis=-1), 1.0)
  return sum(jnp.sum(m * real, axis=-1) / count for m in masks if m is not None)


class ThresholdMethod(base.Method):
  """Hard thresholds on the importance score: LTP (learned) or manual (fixed).

  Attributes (from the config): final_threshold, temperature, reg_lambda, score_norm,
  score_norm_constant, first_layer_prunes, and the variant choices of `ltp_variant`
  (soft_variant, reg_masks, reg_norm, threshold_floor).
  """

  def __init__(self, config, num_layers: int, learned: bool):
    self.name = "ltp" if learned else "threshold"
    self.trainable = learned
    self.config = config
    self.choices = ltp_variant.resolve(config)
    self.num_layers = num_layers

  def init_params(self, rng):
    del rng
    return {"delta": jnp.zeros((self.num_layers,), jnp.float32)} if self.trainable else {}

  def _prunes(self, index: int) -> bool:
    return index > 0 or bool(self.config.get("first_layer_prunes"))

  def thresholds(self, params) -> jax.Array:
    """theta per layer <float32>[layers]; layer 0 stays 0 (no gradient) unless it prunes."""
    theta = threshold_schedule(self.config.final_threshold, self.num_layers)
    if self.trainable:
      theta = theta + params["delta"]
    return theta if self._prunes(0) else theta.at[0].set(0.0)

  def _score(self, received, token_mask):
    return scores.normalized(received, token_mask, self.config.score_norm,
                             self.config.score_norm_constant)

  def prune_fn(self, params, stage, rng=None):
    del rng
    if stage == "finetune":
      return None
    theta = self.thresholds(params)
    cfg, choices = self.config, self.choices

    def hard(index, received, token_mask, hidden, lengths, protected):
      del hidden, lengths, protected
      if not self._prunes(index):
        return token_mask, None, None
      threshold = jnp.maximum(jax.lax.stop_gradient(theta[index]),
                              choices["threshold_floor"])
      return hard_keep(self._score(received, token_mask), threshold, token_mask), None, None

    def soft(index, received, token_mask, hidden, lengths, protected):
      del hidden, lengths, protected
      if not self._prunes(index):
        return token_mask, None, None
      m = soft_mask(self._score(received, token_mask), theta[index], cfg.temperature)
      m = scores.protect_first(m, token_mask)
      if choices["soft_variant"] == "reference":
        new_mask, scale = token_mask, m
      else:
        new_mask, scale = token_mask * m, None
      penalised = m if choices["reg_masks"] == "layer" else new_mask
      return new_mask, scale, penalised

    return soft if stage == "soft" else hard

  def regularizer(self, output: encoder_lib.EncoderOutput, attention_mask, stage):
    if stage != "soft":
      return super().regularizer(output, attention_mask, stage)
    return self.config.reg_lambda * mask_regularizer(
        output.prune_aux, attention_mask, self.choices["reg_norm"],
        self.config.score_norm_constant)

  def metrics(self, params):
    return {"thresholds": [round(float(t), 6) for t in self.thresholds(params)]}
