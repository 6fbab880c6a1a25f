"""The interface every pruning method implements, and the no-pruning method.

A method owns a parameter subtree (`params['pruning']`, trained by its own optimizer)
and, for a training stage, provides the encoder's `prune_fn` hook, the per-example
training loss, and optionally a teacher. Stages: 'finetune' (no pruning), 'soft'
(differentiable or stochastic masks, method parameters trained), 'hard' (binary keep
decisions, method parameters frozen). Evaluation of a 'soft' stage uses the 'hard'
decisions, which are what inference runs.

The training loop (`tpjax.training.train`) is generic: it calls, per step,

    prune_fn(params['pruning'], stage, rng)      the encoder hook (rng: stochastic gates)
    loss(params['pruning'], output, teacher, batch, stage, progress, num_labels)
    post_update(new_params, old_params)          after the optimizer update

and, per stage, `pruning_optimizer(...)` for `params['pruning']`. With
`needs_teacher`, `teacher` is `teacher_output(...)` of the frozen unpruned model on the
batch (the stage's starting parameters, run without gradients in the same compiled
step; by default its output with attentions). A method may also replace the training
forward's attention softmax (`attention_softmax`) and freeze the backbone in a stage
(`model_frozen`: only `params['pruning']` is differentiated, the model stays
bit-identical).
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tpjax.models import encoder as encoder_lib

STAGES = ("finetune", "soft", "hard")


def task_loss(logits: jax.Array, labels: jax.Array, num_labels: int) -> jax.Array:
  """Per-example loss: cross-entropy, or squared error for regression.

  Args:
    logits: <float32>[batch, num_labels].
    labels: <int32|float32>[batch].
    num_labels: 1 for regression.
  Returns:
    <float32>[batch].
  """
  if num_labels == 1:
    return jnp.square(logits[:, 0] - labels.astype(jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


class Method:
  """No pruning. Subclasses override what they need."""

  name = "none"
  # Whether the method has a 'soft' stage (trainable pruning parameters).
  trainable = False
  # Whether `loss` needs the frozen unpruned model's output (distillation).
  needs_teacher = False
  # Whether the hard keep decision reads prune_fn's `hidden` (the post-attention state).
  # If not, the inference engine decides before the attention output dense and runs
  # that dense, the FFN and the next QKV in one pass over the kept tokens only.
  keep_reads_hidden = False

  def init_params(self, rng: jax.Array) -> dict:
    del rng
    return {}

  def prune_fn(self, params: dict, stage: str,
               rng: Optional[jax.Array] = None) -> Optional[encoder_lib.PruneFn]:
    """The encoder hook for `stage`; `rng` is given in training only."""
    del params, stage, rng
    return None

  def teacher_output(self, model: encoder_lib.EncoderModel, teacher: dict,
                     batch: dict) -> Any:
    """What `loss` receives as `teacher`: the frozen model's output with attentions.

    Args:
      model: the EncoderModel.
      teacher: the frozen model parameters.
      batch: the (per-device) batch.
    """
    return model.apply({"params": teacher}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"], deterministic=True, output_attentions=True)

  def attention_softmax(self, stage: str) -> Optional[Callable]:
    """The encoder's `attention_softmax` in `stage`'s training forward; None: default."""
    del stage
    return None

  def model_frozen(self, stage: str) -> bool:
    """Whether the backbone stays frozen (bit-identical) while `stage` trains."""
    del stage
    return False

  def regularizer(self, output: encoder_lib.EncoderOutput, attention_mask: jax.Array,
                  stage: str) -> jax.Array:
    """Per-example penalty <float32>[batch] added to the task loss."""
    del output, stage
    return jnp.zeros(attention_mask.shape[:1], jnp.float32)

  def loss(self, params: dict, output: encoder_lib.EncoderOutput,
           teacher: Optional[encoder_lib.EncoderOutput], batch: dict, stage: str,
           progress: jax.Array, num_labels: int) -> tuple[jax.Array, dict]:
    """Per-example training loss and the terms worth logging.

    Args:
      params: the method's parameters (`params['pruning']`).
      output: the student's encoder output (with `prune_aux`).
      teacher: the teacher's output (with attentions), or None.
      batch: the (per-device) batch: input_ids, attention_mask, token_type_ids,
        labels, weights.
      stage: the stage name.
      progress: <float32>[] training progress in the stage, step / total_steps.
      num_labels: the head's output size.
    Returns:
      (<float32>[batch] loss, {name: <float32>[batch]}); the loop averages both with
      the example weights, so a batch-level scalar is returned broadcast per example.
    """
    del params, teacher, progress
    task = task_loss(output.logits, batch["labels"], num_labels)
    reg = self.regularizer(output, batch["attention_mask"], stage)
    return task + reg, {"task_loss": task, "regularizer": reg}

  def pruning_optimizer(self, settings: ml_collections.ConfigDict,
                        train: ml_collections.ConfigDict,
                        total_steps: int) -> optax.GradientTransformation:
    """The optimizer of `params['pruning']` in a training stage.

    Default (the LTP reference's threshold optimizer): AdamW at
    `settings.pruning_learning_rate`, no warmup, linear decay, no weight decay,
    gradient clipping at `train.grad_clip`.
    """
    lr = optax.linear_schedule(settings.pruning_learning_rate, 0.0, max(total_steps, 1))
    return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                       optax.adamw(lr, weight_decay=0.0))

  def post_update(self, params: dict, previous: dict) -> dict:
    """Projection after each optimizer step (clamps, frozen parts); full params tree."""
    del previous
    return params

  def metrics(self, params: dict) -> dict[str, Any]:
    """Scalars worth logging about the method's parameters."""
    del params
    return {}
