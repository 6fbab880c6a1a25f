"""SDTP on the encoder (methods.md section 3; shared functions in `sdtp`).

A prediction module sits at each pruning location, layer l in `sdtp_layers` (default
1 .. L-1), and reads the layer's post-attention hidden state (the `prune_fn` hook's
`hidden`); its decision removes tokens from that layer's FFN and from every later
layer. [CLS] and [SEP] (`encoder.protected_tokens`) are always kept.

Training is one 'soft' stage after fine-tuning, with the backbone frozen: per location
a straight-through Gumbel-softmax mask (tau = 1) multiplied into the running mask,
applied in later layers' attention through the policy softmax. The loss, per example:

    w_task * CE(student) + sum_s [ w_mse * MSE(pi_s, pi_hat_s) + w_rank * rank(pi_s, pi_hat_s) ]
      (+ w_ratio * DynamicViT ratio loss, off by default)

pi_s is the module's keep probability; pi_hat_s the frozen unpruned model's
gradient-times-input saliency at the same point (target scalar `sdtp_target`: the
gold-class logit or the task loss; normalisation `sdtp_norm`), both over real tokens
that are not [CLS]/[SEP]. Inference ('hard'): location s keeps the
ceil(rho_s * original length) live tokens with the best predicted score, rho_s =
r^(s+1) (`sdtp_keep_ratio` r) unless `sdtp_keep_ratios` lists them.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base
from tpjax.pruning import sdtp

TARGETS = ("logit", "loss")


def probed_forward(module: encoder_lib.EncoderModel, input_ids, attention_mask,
                   token_type_ids, probes: dict) -> tuple[jax.Array, tuple]:
  """The unpruned encoder with `probes[l]` added to layer l's post-attention state.

  Use through `model.apply(variables, ..., method=probed_forward)`.

  Args:
    module: the bound EncoderModel.
    input_ids, attention_mask, token_type_ids: <int32>[batch, seq].
    probes: {layer: <float32>[batch, seq, hidden]}.
  Returns:
    (logits <float32>[batch, labels], per probed layer in ascending order the state
    the probe was added to, <float32>[batch, seq, hidden]).
  """
  hidden = module.embed(input_ids, attention_mask, token_type_ids)
  token_mask = attention_mask.astype(jnp.float32)
  probed = []
  for index, layer in enumerate(module.layers):
    hidden, _ = layer.attend(hidden, token_mask, True)
    if index in probes:
      probed.append(hidden)
      hidden = hidden + probes[index]
    hidden = layer.feed_forward(hidden, True)
  return module.head(hidden), tuple(probed)


def encoder_saliency(model: encoder_lib.EncoderModel, params: dict, batch: dict,
                     layers: tuple[int, ...], target: str, norm: str
                     ) -> tuple[jax.Array, ...]:
  """Saliency targets of the frozen encoder at `layers`' post-attention states.

  Args:
    model: the EncoderModel with a head.
    params: its parameters.
    batch: input_ids, attention_mask, token_type_ids <int32>[batch, seq]; labels.
    layers: the probed layers, ascending.
    target: 'logit' (the gold class's logit; the prediction for regression) or 'loss'
      (the task loss).
    norm: one of `sdtp.SALIENCY_NORMS`, over real tokens that are not [CLS]/[SEP].
  Returns:
    per layer <float32>[batch, seq].
  """
  if target not in TARGETS:
    raise ValueError(f"sdtp_target {target!r} is not one of {TARGETS}.")
  ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
  labels = batch["labels"]
  num_labels = model.num_labels

  def target_fn(probes):
    logits, hiddens = model.apply({"params": params}, ids, mask, types,
                                  dict(zip(layers, probes)), method=probed_forward)
    if target == "loss":
      value = base.task_loss(logits, labels, num_labels)
    elif num_labels == 1:
      value = logits[:, 0]
    else:
      value = jnp.take_along_axis(logits, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]
    return jnp.sum(value), hiddens

  valid = sdtp.prunable(mask > 0, encoder_lib.protected_tokens(mask, types))
  shape = ids.shape + (model.config.hidden_size,)
  targets, _ = sdtp.saliency_targets(target_fn, [shape] * len(layers), norm,
                                     [valid] * len(layers))
  return targets


class SDTPMethod(base.Method):
  """SDTP behind the Method interface (stages 'finetune', then 'soft').

  Config fields (config.pruning): sdtp_layers (() = 1 .. L-1), sdtp_keep_ratio (r),
  sdtp_keep_ratios (() = r, r^2, ...), sdtp_target ('logit' | 'loss'), sdtp_norm
  ('raw' | 'abs' | 'seq_max'), sdtp_task_weight, sdtp_mse_weight, sdtp_rank_weight,
  sdtp_ratio_weight (DynamicViT ratio loss, 0 = off), sdtp_tau. The modules train at
  the stage's pruning_learning_rate; the backbone is frozen in the 'soft' stage.
  """

  name = "sdtp"
  trainable = True
  keep_reads_hidden = True  # the predictors score the post-attention state
  needs_teacher = True  # the frozen model gives the saliency targets

  def __init__(self, config: ml_collections.ConfigDict,
               model_config: config_lib.EncoderConfig):
    self.config = config
    self.hidden = model_config.hidden_size
    num_layers = model_config.num_hidden_layers
    self.layers = tuple(config.sdtp_layers) or tuple(range(1, num_layers))
    if list(self.layers) != sorted(set(self.layers)) or not all(
        0 <= l < num_layers for l in self.layers):
      raise ValueError(f"sdtp_layers {self.layers} must be ascending layer indices "
                       f"below {num_layers}.")
    self.ratios = (tuple(config.sdtp_keep_ratios) or
                   sdtp.geometric_ratios(len(self.layers), config.sdtp_keep_ratio))
    if len(self.ratios) != len(self.layers):
      raise ValueError(f"sdtp_keep_ratios has {len(self.ratios)} values for "
                       f"{len(self.layers)} locations {self.layers}.")
    if any(not 0 < r <= 1 for r in self.ratios):
      raise ValueError(f"keep ratios {self.ratios} must lie in (0, 1].")
    if config.sdtp_norm not in sdtp.SALIENCY_NORMS or config.sdtp_target not in TARGETS:
      raise ValueError(f"sdtp_norm {config.sdtp_norm!r} / sdtp_target "
                       f"{config.sdtp_target!r}: expected {sdtp.SALIENCY_NORMS} / {TARGETS}.")
    self.stage_of = {layer: s for s, layer in enumerate(self.layers)}
    self.predictor = sdtp.Predictor()

  def init_params(self, rng):
    dummy = jnp.zeros((1, 1, self.hidden), jnp.float32)
    return {"predictors": {
        str(layer): self.predictor.init(jax.random.fold_in(rng, layer), dummy)["params"]
        for layer in self.layers}}

  def _logits(self, params, layer, hidden):
    return self.predictor.apply({"params": params["predictors"][str(layer)]}, hidden)

  def prune_fn(self, params, stage, rng=None):
    if stage == "finetune":
      return None
    if stage == "soft" and rng is None:
      raise ValueError("SDTP's soft stage samples its masks: prune_fn needs an rng.")

    def prune(index, received, token_mask, hidden, lengths, protected):
      del received
      if index not in self.stage_of:
        return token_mask, None, None
      logits = self._logits(params, index, hidden)
      if stage == "soft":
        decision = sdtp.gumbel_keep(logits, jax.random.fold_in(rng, index),
                                    self.config.sdtp_tau)
        new_mask = sdtp.cumulative_mask(token_mask, decision, protected)
        return new_mask, None, {"pi": sdtp.keep_probability(logits)}
      k = sdtp.keep_count(lengths, self.ratios[self.stage_of[index]])
      keep = sdtp.top_k_keep(sdtp.keep_score(logits), token_mask > 0, protected, k)
      return keep, None, None

    return prune

  def attention_softmax(self, stage):
    return sdtp.policy_softmax if stage == "soft" else None

  def model_frozen(self, stage):
    return stage == "soft"

  def teacher_output(self, model, teacher, batch):
    return {"saliency": encoder_saliency(model, teacher, batch, self.layers,
                                         self.config.sdtp_target, self.config.sdtp_norm)}

  def loss(self, params, output, teacher, batch, stage, progress, num_labels):
    if stage != "soft":
      return super().loss(params, output, teacher, batch, stage, progress, num_labels)
    cfg = self.config
    real = batch["attention_mask"] > 0
    valid = sdtp.prunable(real, encoder_lib.protected_tokens(real, batch["token_type_ids"]))
    task = base.task_loss(output.logits, batch["labels"], num_labels)
    mse = rank = jnp.zeros_like(task)
    for s, layer in enumerate(self.layers):
      pi, target = output.prune_aux[layer]["pi"], teacher["saliency"][s]
      mse = mse + sdtp.mse_loss(pi, target, valid)
      rank = rank + sdtp.ranking_loss(pi, target, valid)
    ratio = sdtp.ratio_loss([output.token_masks[l] for l in self.layers], self.ratios,
                            real, 1.0)
    loss = (cfg.sdtp_task_weight * task + cfg.sdtp_mse_weight * mse +
            cfg.sdtp_rank_weight * rank + cfg.sdtp_ratio_weight * ratio)
    kept = jnp.sum(output.token_masks[-1] * real, -1) / jnp.maximum(jnp.sum(real, -1), 1)
    return loss, {"task_loss": task, "mse": mse, "ranking": rank, "ratio_loss": ratio,
                  "train_kept_last": kept}

  def pruning_optimizer(self, settings, train, total_steps):
    """Adam on the modules, linear decay from the stage's pruning_learning_rate."""
    lr = optax.linear_schedule(settings.pruning_learning_rate, 0.0, max(total_steps, 1))
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), optax.adam(lr))

  def metrics(self, params):
    del params
    return {"sdtp_layers": list(self.layers),
            "keep_ratios": [round(r, 4) for r in self.ratios]}

