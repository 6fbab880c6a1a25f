"""ToP: constraint-aware, ranking-distilled token pruning (Li et al., KDD 2023;
methods.md section 2).

Every layer is a pruning location, right after its attention. At location l the live
tokens that are not [CLS]/[SEP] are ranked by importance (methods.md section 0) and
the normalised rank is cut into `top_bins` bins (bin 0 the most important). Two kinds
of hard-concrete gates (`hard_concrete`) decide: a layer gate (does location l prune
at all) and one gate per (location, bin). A token's mask is

    m = 1 - z_layer * (1 - z_bin),

multiplied into the running token mask, which later layers use as soft key weights:
in training pruned tokens leave the attention keys, as at inference (the reference
only zeroes their hidden states).

Training (the 'soft' stage; the unpruned fine-tuned model is the teacher):

    loss = KD(student, teacher; T)  (MSE on labels for regression)
         + alpha * max(0.01, 1 - warmup progress) * sum_{l in rank layers} rank loss
         + lambda1 (s - t) + lambda2 (s - t)^2

with s the expected FLOPs sparsity from the gate probabilities on each example's real
length (penalty per example, averaged over the global batch like the other terms),
t the target ramped linearly from 0 over the warm-up, and the multipliers trained by
gradient ascent. Inference ('hard') closes, per location, the bins with the smallest
probabilities; how many is `closed_bins`'s rule (the reference's, or the expected
count); pruning is cumulative across locations.

`config.pruning.top_variant` ('reference', the default, or 'tpjax') picks a value for
every choice in `CHOICES` and `STAGE_CHOICES` that the config leaves None (an explicit
value wins); `complete` writes them into the config so config.json records what ran:

  top_layer_gate     'ste': the layer gate's sample is binarised in the forward pass,
                     1[z > 0], with a straight-through gradient (reference);
                     'soft': the continuous sample enters the mask.
  top_cumulative     'binary': a location's mask multiplies the previous location's
                     binarised decision 1[m > 0], so soft values never compound across
                     layers (reference); 'soft': it multiplies the previous soft mask.
  top_rank_alpha     ranking-distillation weight (reference SST-2 script 1e-2; tpjax 1e-3).
  top_rank_norm      the normaliser of the scores the ranking loss compares: 'batch'
                     (heads x the batch's padded length, reference), or 'fixed' / 'live'
                     (as score_norm: score_norm_constant, or the live token count).
  top_sparsity_mean  expected sparsity over a batch: 'examples', the mean of per-example
                     ratios (reference; its linear term does not depend on how the batch
                     is split across devices), or 'tokens', a ratio of summed MACs.
Optimiser of the model in the soft stage (config.stage_settings.soft):
  warmup_ratio       reference 0; tpjax None (config.train's, 0.06).
  weight_decay       reference 0; tpjax None (config.train's, 0.01).
The reference's model learning rate, 1e-5, is the ToP configs' soft learning_rate.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base
from tpjax.pruning import flops
from tpjax.pruning import hard_concrete
from tpjax.pruning import ranking
from tpjax.pruning import scores
from tpjax.pruning import variants


VARIANTS = ("reference", "tpjax")
CHOICES = {
    "top_layer_gate": {"reference": "ste", "tpjax": "soft"},
    "top_cumulative": {"reference": "binary", "tpjax": "soft"},
    "top_rank_alpha": {"reference": 1e-2, "tpjax": 1e-3},
    "top_rank_norm": {"reference": "batch", "tpjax": "fixed"},
    "top_sparsity_mean": {"reference": "examples", "tpjax": "tokens"},
}
# Soft-stage optimiser settings; None leaves config.train's value.
STAGE_CHOICES = {
    "warmup_ratio": {"reference": 0.0, "tpjax": None},
    "weight_decay": {"reference": 0.0, "tpjax": None},
}
ALLOWED = {"top_layer_gate": ("ste", "soft"), "top_cumulative": ("binary", "soft"),
           "top_rank_norm": ("batch", "fixed", "live"),
           "top_sparsity_mean": ("examples", "tokens")}


def _variant(pruning: ml_collections.ConfigDict) -> str:
  # A run saved before the field trained as 'tpjax' does.
  return variants.check("top_variant", pruning.get("top_variant", "tpjax") or "reference",
                        VARIANTS)


def resolve(pruning: ml_collections.ConfigDict) -> dict:
  """The effective value of every choice in CHOICES: explicit, else the variant's.

  Raises:
    ValueError: for an unknown variant or choice.
  """
  return variants.resolve(pruning, _variant(pruning), CHOICES, ALLOWED)


def complete(config: ml_collections.ConfigDict) -> None:
  """Fills, in place, every None choice of a ToP run (pruning fields and the soft
  stage's optimiser), so config.json records exactly what ran. Other methods are
  left alone."""
  if config.pruning.method != "top":
    return
  variants.complete(config, _variant(config.pruning), resolve(config.pruning), ("soft",),
                    STAGE_CHOICES)


def rank_bins(score: jax.Array, prunable: jax.Array, bins: int) -> jax.Array:
  """Each prunable token's importance-rank bin, 0 holding the most important.

  Args:
    score: <float32>[batch, seq].
    prunable: <bool>[batch, seq] tokens that take part (live, not [CLS]/[SEP]).
    bins: number of bins.
  Returns:
    <int32>[batch, seq] in [0, bins); meaningless where not prunable.
  """
  ranked = jnp.where(prunable, score, -jnp.inf)
  order = jnp.argsort(-ranked, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  count = jnp.maximum(jnp.sum(prunable, axis=-1, keepdims=True), 1)
  return jnp.minimum(rank * bins // count, bins - 1).astype(jnp.int32)


INFERENCE_RULES = ("expected", "reference")


def closed_bins(layer_prob: jax.Array, bin_prob: jax.Array,
                rule: str = "expected") -> jax.Array:
  """Inference decision per location: which bins are closed.

  Both rules close the least likely bins. 'reference': a location prunes iff
  P(layer gate) >= 0.5, and then closes round(bins - sum_b P_b) bins. 'expected':
  every location closes round(bins * P(layer gate) * (1 - mean_b P_b)) bins, the
  expected closed fraction, so realised FLOPs follow the trained expectation also
  when the layer gates have not polarised to 0 or 1 (short runs); with polarised
  layer gates the two rules agree.

  Args:
    layer_prob: <float32>[locations] P(z != 0) of the layer gates.
    bin_prob: <float32>[locations, bins] P(z != 0) of the bin gates.
    rule: 'expected' or 'reference'.
  Returns:
    <bool>[locations, bins], True where the bin is closed.
  """
  bins = bin_prob.shape[-1]
  if rule == "reference":
    n_closed = jnp.where(layer_prob >= 0.5, jnp.round(bins - jnp.sum(bin_prob, axis=-1)), 0)
  elif rule == "expected":
    n_closed = jnp.round(bins * layer_prob * (1.0 - jnp.mean(bin_prob, axis=-1)))
  else:
    raise ValueError(f"top_inference {rule!r} is not one of {INFERENCE_RULES}.")
  position = jnp.argsort(jnp.argsort(bin_prob, axis=-1, stable=True), axis=-1, stable=True)
  return position < n_closed[:, None]


def expected_kept(layer_prob: jax.Array, bin_prob: jax.Array, lengths: jax.Array,
                  protected: jax.Array) -> jax.Array:
  """Expected tokens left after each location.

  Per location the keep rate of prunable tokens is 1 - (1 - mean_b P_b) * P_layer;
  rates multiply across locations; protected tokens always stay.

  Args:
    layer_prob: <float32>[locations].
    bin_prob: <float32>[locations, bins].
    lengths: <float32>[batch] real tokens per example.
    protected: <float32>[batch] protected tokens per example.
  Returns:
    <float32>[batch, locations].
  """
  keep = 1.0 - (1.0 - jnp.mean(bin_prob, axis=-1)) * layer_prob
  rho = jnp.cumprod(keep)
  return protected[:, None] + (lengths - protected)[:, None] * rho[None, :]


def expected_sparsity(kept: jax.Array, lengths: jax.Array, weights: jax.Array,
                      model_config: config_lib.EncoderConfig,
                      mean: str = "examples") -> jax.Array:
  """Per example, 1 - pruned MACs / unpruned MACs on real lengths (flops.py formula).

  Args:
    kept: <float32>[batch, layers] tokens left after each layer's decision.
    lengths: <float32>[batch].
    weights: <float32>[batch] example weights (0 for padding rows).
    model_config: the encoder's sizes.
    mean: 'examples' (reference): each example's own ratio; the loss averages it, and
      the penalty on it, over the global batch, so any device count gives the same
      value. 'tokens': one ratio of this device's sums (long examples weigh more, and
      the value depends on how the batch is split), the same for every example.
  Returns:
    <float32>[batch].
  """
  h, ff = model_config.hidden_size, model_config.intermediate_size
  entering = jnp.concatenate([lengths[:, None], kept[:, :-1]], axis=1)
  pruned = jnp.sum(flops.mac_formula(entering, kept, h, ff), axis=-1)
  full = kept.shape[1] * flops.mac_formula(lengths, lengths, h, ff)
  if mean == "examples":
    return 1.0 - pruned / jnp.maximum(full, 1e-9)
  if mean == "tokens":
    ratio = jnp.sum(weights * pruned) / jnp.maximum(jnp.sum(weights * full), 1e-9)
    return jnp.broadcast_to(1.0 - ratio, lengths.shape)
  raise ValueError(f"top_sparsity_mean {mean!r} is not 'examples' or 'tokens'.")


def rank_scores(received: jax.Array, token_mask: jax.Array, norm: str,
                constant: float) -> jax.Array:
  """The scores the ranking loss compares: received attention over a normaliser.

  Args:
    received: <float32>[batch, seq] `encoder.attention_received` (already / heads).
    token_mask: <float32>[batch, seq].
    norm: 'batch' (the padded length of the batch: with the heads, the reference's
      heads x batch length), 'fixed' or 'live' (`scores.normalized`).
    constant: Z for 'fixed'.
  Returns:
    <float32>[batch, seq]; 0 for dead tokens.
  """
  if norm == "batch":
    return jnp.where(token_mask > 0, received / received.shape[-1], 0.0)
  return scores.normalized(received, token_mask, norm, constant)


def distillation_loss(student: jax.Array, teacher: jax.Array,
                      temperature: float) -> jax.Array:
  """KL(teacher || student) at temperature T, times T^2: [batch, labels] -> [batch]."""
  log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
  log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
  return kl * temperature**2


def _in_subtree(path: tuple, name: str) -> bool:
  return any(getattr(key, "key", None) == name for key in path)


def default_rank_layers(num_layers: int) -> tuple[int, ...]:
  """The reference's layers 1 .. L/3 - 1 (0-indexed), at least layer 1."""
  return tuple(range(1, max(2, num_layers // 3)))


class ToPMethod(base.Method):
  """ToP behind the Method interface.

  Config fields (config.pruning): top_bins, top_target (FLOPs sparsity), top_warmup
  (fraction of the stage for the target ramp and the ranking-weight decay),
  top_rank_k, top_rank_layers (() = default_rank_layers),
  top_temperature, top_layer_gate_init / top_bin_gate_init (initial P(z != 0)),
  top_freeze_embeddings, top_adam_b2, top_first_layer (earlier layers never prune;
  1 in the reference, whose first prune location uses layer 1's scores),
  top_inference ('expected' | 'reference', see `closed_bins`), score_norm,
  score_norm_constant, and the variant's choices (module docstring): top_variant,
  top_layer_gate, top_cumulative, top_rank_alpha, top_rank_norm, top_sparsity_mean.
  The gates' and multipliers' learning rate is the stage's pruning_learning_rate.
  """

  name = "top"
  trainable = True
  needs_teacher = True

  def __init__(self, config: ml_collections.ConfigDict,
               model_config: config_lib.EncoderConfig):
    self.config = config
    self.model_config = model_config
    self.num_layers = model_config.num_hidden_layers
    self.rank_layers = tuple(config.top_rank_layers) or default_rank_layers(
        self.num_layers)
    self.choices = resolve(config)
    # Layers before top_first_layer never prune: their layer gates count as closed.
    first = config.get("top_first_layer", 0)  # runs saved before the field
    self.prunes = jnp.arange(self.num_layers) >= first

  def init_params(self, rng):
    del rng
    cfg = self.config
    layer = hard_concrete.log_alpha_for(cfg.top_layer_gate_init)
    bins = hard_concrete.log_alpha_for(cfg.top_bin_gate_init)
    return {"gates": {"layer": jnp.full((self.num_layers,), layer, jnp.float32),
                      "bins": jnp.full((self.num_layers, cfg.top_bins), bins, jnp.float32)},
            "lagrangian": {"lambda1": jnp.zeros((), jnp.float32),
                           "lambda2": jnp.zeros((), jnp.float32)}}

  # ------------------------------------------------------------------ gates

  def probabilities(self, params) -> tuple[jax.Array, jax.Array]:
    """(P layer gate open <float32>[L], P bin open <float32>[L, bins])."""
    gates = params["gates"]
    layer = jnp.where(self.prunes, hard_concrete.prob_open(gates["layer"]), 0.0)
    return layer, hard_concrete.prob_open(gates["bins"])

  def hard_bin_keep(self, params) -> jax.Array:
    """Inference keep (1) / drop (0) per (location, bin): <float32>[L, bins]."""
    rule = self.config.get("top_inference", "expected")  # runs saved before the field
    drop = closed_bins(*self.probabilities(params), rule)
    return 1.0 - drop.astype(jnp.float32)

  def prune_fn(self, params, stage, rng=None):
    if stage == "finetune":
      return None
    cfg = self.config
    if stage == "soft":
      if rng is None:
        raise ValueError("ToP's soft stage samples its gates: prune_fn needs an rng.")
      layer_rng, bin_rng = jax.random.split(rng)
      z_layer = hard_concrete.sample(params["gates"]["layer"], layer_rng)
      if self.choices["top_layer_gate"] == "ste":
        # forward 1[z > 0], gradient of z (the reference's straight-through estimator)
        z_layer = z_layer + jax.lax.stop_gradient((z_layer > 0).astype(z_layer.dtype)
                                                  - z_layer)
      z_layer = z_layer * self.prunes
      z_bins = hard_concrete.sample(params["gates"]["bins"], bin_rng)
      bin_keep = 1.0 - z_layer[:, None] * (1.0 - z_bins)
    else:
      bin_keep = jax.lax.stop_gradient(self.hard_bin_keep(params))
    binary_previous = self.choices["top_cumulative"] == "binary"

    def prune(index, received, token_mask, hidden, lengths, protected):
      del hidden, lengths
      score = scores.normalized(received, token_mask, cfg.score_norm, cfg.score_norm_constant)
      live = token_mask > 0
      prunable = live & ~protected
      gate = bin_keep[index][rank_bins(score, prunable, cfg.top_bins)]
      previous = live.astype(token_mask.dtype) if binary_previous else token_mask
      new_mask = previous * jnp.where(prunable, gate, 1.0)
      return new_mask, None, {"score": score, "received": received, "live": live}

    return prune

  # ------------------------------------------------------------------ training

  def loss(self, params, output, teacher, batch, stage, progress, num_labels):
    if stage != "soft":
      return super().loss(params, output, teacher, batch, stage, progress, num_labels)
    cfg = self.config
    real = batch["attention_mask"] > 0
    warm = jnp.minimum(progress / max(cfg.top_warmup, 1e-9), 1.0)

    if num_labels == 1:
      distill = base.task_loss(output.logits, batch["labels"], num_labels)
    else:
      distill = distillation_loss(output.logits, teacher.logits, cfg.top_temperature)

    norm = self.choices["top_rank_norm"]
    real_mask = real.astype(jnp.float32)
    teacher_score = rank_scores(
        encoder_lib.attention_received(teacher.attentions[-1], real_mask), real_mask,
        norm, cfg.score_norm_constant)
    not_cls = real.at[:, 0].set(False)
    rank = 0.0
    for l in self.rank_layers:
      aux = output.prune_aux[l]
      student_score = rank_scores(aux["received"], aux["live"].astype(jnp.float32), norm,
                                  cfg.score_norm_constant)
      rank = rank + ranking.ranking_loss(student_score, teacher_score, not_cls & aux["live"],
                                         cfg.top_rank_k)
    rank_weight = self.choices["top_rank_alpha"] * jnp.maximum(0.01, 1.0 - warm)

    layer_prob, bin_prob = self.probabilities(params)
    lengths = jnp.sum(real, axis=-1).astype(jnp.float32)
    protected = jnp.sum(encoder_lib.protected_tokens(real, batch["token_type_ids"]),
                        axis=-1).astype(jnp.float32)
    kept = expected_kept(layer_prob, bin_prob, lengths, protected)
    sparsity = expected_sparsity(kept, lengths, batch["weights"], self.model_config,
                                 self.choices["top_sparsity_mean"])
    target = cfg.top_target * warm
    # Per example too, so the penalty is the same on any device count; the mean of
    # (s_i - t)^2 exceeds (mean s - t)^2 by the variance of s_i across the batch.
    gap = sparsity - target
    lagrangian = params["lagrangian"]
    penalty = lagrangian["lambda1"] * gap + lagrangian["lambda2"] * gap**2

    ones = jnp.ones_like(distill)
    loss = distill + rank_weight * rank + penalty
    return loss, {"distill": distill, "ranking": rank, "expected_sparsity": sparsity,
                  "target_sparsity": target * ones, "lagrangian": penalty,
                  "lambda1": lagrangian["lambda1"] * ones,
                  "lambda2": lagrangian["lambda2"] * ones}

  def pruning_optimizer(self, settings, train, total_steps):
    """Adam on the gates (descent) and on the multipliers (ascent), constant rate."""
    del train, total_steps
    lr = settings.pruning_learning_rate
    # A label function, not a prefix tree: inside the train loop's own
    # multi_transform this optimizer sees the whole (masked) parameter tree.
    label = lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, _: "ascent" if _in_subtree(path, "lagrangian") else "descent", tree)
    return optax.multi_transform(
        {"descent": optax.adam(lr, b2=self.config.top_adam_b2),
         "ascent": optax.chain(optax.adam(lr, b2=self.config.top_adam_b2),
                               optax.scale(-1.0))}, label)

  def post_update(self, params, previous):
    pruning = dict(params["pruning"])
    pruning["gates"] = jax.tree.map(hard_concrete.clamp, pruning["gates"])
    model = params["model"]
    if self.config.top_freeze_embeddings:
      model = {**model, "embeddings": previous["model"]["embeddings"]}
    return {**params, "model": model, "pruning": pruning}

  def metrics(self, params):
    layer_prob, bin_prob = self.probabilities(params)
    keep = self.hard_bin_keep(params)
    return {"layer_gate_prob": [round(float(p), 4) for p in layer_prob],
            "closed_bins": [int(c) for c in (keep == 0).sum(-1)],
            "mean_bin_prob": [round(float(p), 4) for p in bin_prob.mean(-1)],
            "lambda1": round(float(params["lagrangian"]["lambda1"]), 5),
            "lambda2": round(float(params["lagrangian"]["lambda2"]), 5)}
