"""Learned Token Pruning (Kim et al., KDD 2022; methods.md section 1).

Each layer l has a threshold theta_l = final_threshold * l / L + delta_l with a
learnable delta_l. Soft stage: m_l = sigmoid((s_l - theta_l) / T), penalised by
lambda * sum_l mean(m_l) over real tokens. Hard stage: keep_l = s_l >= theta_l, and
pruned tokens stay pruned in every later layer.
"""

import jax
import jax.numpy as jnp

from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base
from tpjax.pruning import scores

SOFT_VARIANTS = ("reference", "cumulative")


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


def mask_regularizer(masks: tuple, attention_mask: jax.Array) -> jax.Array:
  """sum_l of the mean soft mask over real tokens, per example.

  Args:
    masks: L x <float32>[batch, seq].
    attention_mask: [batch, seq], 1 for real tokens.
  Returns:
    <float32>[batch].
  """
  real = attention_mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(real, axis=-1), 1.0)
  return sum(jnp.sum(m * real, axis=-1) / count for m in masks)


class ThresholdMethod(base.Method):
  """Hard thresholds on the importance score: LTP (learned) or manual (fixed).

  Attributes (from the config): final_threshold, temperature, reg_lambda,
  soft_variant ('reference': m scales the layer's output, as in the reference code;
  'cumulative': m multiplies into the running mask and softly masks later keys),
  score_norm, score_norm_constant.
  """

  def __init__(self, config, num_layers: int, learned: bool):
    if config.soft_variant not in SOFT_VARIANTS:
      raise ValueError(f"soft_variant {config.soft_variant!r} is not one of "
                       f"{SOFT_VARIANTS}.")
    self.name = "ltp" if learned else "threshold"
    self.trainable = learned
    self.config = config
    self.num_layers = num_layers

  def init_params(self, rng):
    del rng
    return {"delta": jnp.zeros((self.num_layers,), jnp.float32)} if self.trainable else {}

  def thresholds(self, params) -> jax.Array:
    base_schedule = threshold_schedule(self.config.final_threshold, self.num_layers)
    return base_schedule + params["delta"] if self.trainable else base_schedule

  def _score(self, probs, token_mask):
    return scores.importance(probs, token_mask, self.config.score_norm,
                             self.config.score_norm_constant)

  def prune_fn(self, params, stage, rng=None):
    del rng
    if stage == "finetune":
      return None
    theta = self.thresholds(params)
    cfg = self.config

    def hard(index, probs, token_mask, hidden, lengths, protected):
      del hidden, lengths, protected
      keep = hard_keep(self._score(probs, token_mask), jax.lax.stop_gradient(theta[index]),
                       token_mask)
      return keep, None, None

    def soft(index, probs, token_mask, hidden, lengths, protected):
      del hidden, lengths, protected
      m = soft_mask(self._score(probs, token_mask), theta[index], cfg.temperature)
      m = scores.protect_first(m, token_mask)
      if cfg.soft_variant == "reference":
        return token_mask, m, m
      token_mask = token_mask * m
      return token_mask, None, token_mask

    return soft if stage == "soft" else hard

  def regularizer(self, output: encoder_lib.EncoderOutput, attention_mask, stage):
    if stage != "soft":
      return super().regularizer(output, attention_mask, stage)
    return self.config.reg_lambda * mask_regularizer(output.prune_aux, attention_mask)

  def metrics(self, params):
    return {"thresholds": [round(float(t), 6) for t in self.thresholds(params)]}
