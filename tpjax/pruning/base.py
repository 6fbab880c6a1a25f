"""The interface every pruning method implements, and the no-pruning method.

A method owns a parameter subtree (`params['pruning']`, trained by its own optimizer)
and, for a training stage, provides the encoder's `prune_fn` hook and a per-example
regulariser. Stages: 'finetune' (no pruning), 'soft' (differentiable masks), 'hard'
(binary keep decisions, method parameters frozen).
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from tpjax.models import encoder as encoder_lib

STAGES = ("finetune", "soft", "hard")


class Method:
  """No pruning. Subclasses override what they need."""

  name = "none"
  # Whether the method has a 'soft' stage (trainable pruning parameters).
  trainable = False

  def init_params(self, rng: jax.Array) -> dict:
    del rng
    return {}

  def prune_fn(self, params: dict, stage: str) -> Optional[encoder_lib.PruneFn]:
    del params, stage
    return None

  def regularizer(self, output: encoder_lib.EncoderOutput, attention_mask: jax.Array,
                  stage: str) -> jax.Array:
    """Per-example penalty <float32>[batch] added to the task loss."""
    del output, stage
    return jnp.zeros(attention_mask.shape[:1], jnp.float32)

  def metrics(self, params: dict) -> dict[str, Any]:
    """Scalars worth logging about the method's parameters."""
    del params
    return {}
