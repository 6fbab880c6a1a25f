"""Trains SDTP prediction modules for a decoder's prefill (issue 11 part B, issue 25).

    python -m tpjax.training.sdtp_decoder --config=configs/smollm_sdtp.py \\
        --workdir=runs/smollm_sdtp [--config.train.recipe=pruned]

1. Saliency targets: windows of the training articles (`saliency.window` tokens) go
   through the frozen decoder once with zero probes at every pruning location; one
   backward pass gives gradient times input at all of them (sdtp.saliency_targets).
   T is the loss of the predictions made inside the always-kept tail
   (`saliency.target_last` <= `schedule.keep_last`), so a prunable token's saliency
   is its influence on other tokens; targets are normalised over prunable tokens
   only. The hidden states at the locations are kept too (cached in
   <workdir>/targets.npz, reused when present; delete it after changing the target).
2. The per-stage predictors (sdtp.Predictor) are trained by one of two recipes
   (`train.recipe`), the backbone never updated, Adam in one shared loop (`fit`: the
   last `holdout_windows` windows held out, a progress bar, a curve every 25 steps,
   a non-finite loss stops the run before anything is written):
   - "teacher_forcing" (default, `train_predictors`): the modules learn the targets
     with the MSE and ranking losses (unit weights; the ranking on the keep-minus-drop
     logit, which inference ranks by) on the cached hidden states of the unpruned
     model. Deviation from the paper, for CPU cost: no task loss and no simulated
     masks. One step costs milliseconds, and one training serves every keep ratio.
   - "pruned" (the paper's way, `train_pruned`): the modules are trained through the
     model they prune. At each stage the module scores the hidden states of the
     already-pruned model, and a straight-through Gumbel top-k mask
     (sdtp.gumbel_top_k_keep) keeps exactly the inference schedule's kept_count, the
     always-kept tokens among them, chosen among the tokens still live, so masks are
     cumulative through the stages; attention applies them through the policy
     softmax (sdtp_decoder.masked_prefill). Exact rather than in expectation: an
     independent Gumbel draw per token keeps sum(pi) tokens, which the LM and KD
     terms, both lowest when nothing is pruned, would push up, and the model would
     train at another kept count and by another rule than inference's top-k. Loss
     per step, LM and KD over the predictions made in the always-kept tail
     (`target_last`, standing in for the continuation inference predicts from the
     pruned prompt; a pruned token's own prediction never counts):
         lm_weight * LM(pruned) + kd_weight * KL(unpruned || pruned)
           + sum_s (mse_weight * MSE_s + rank_weight * rank_s)
     methods.md lists task (LM) + MSE + ranking with unit weights; the KD term is the
     distillation from the unpruned model (kd_weight 0 drops it). MSE and ranking
     use the cached targets, over the tokens live at the stage. Held-out metrics are
     the same terms under the inference decision, plus the top-k agreement of
     teacher forcing on the unpruned hidden states, so the recipes compare directly.
     The modules learn the hidden states of the saved schedule's pruning: evaluate
     them at that keep ratio. Cost: see configs/smollm_sdtp.py.
3. Writes predictors.msgpack and sdtp.json (schedule, recipe, losses, held-out log).
"""

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax
import tqdm

from tpjax.data import squad_docs
from tpjax.models import decoder as decoder_lib
from tpjax.models import pretrained
from tpjax.pruning import sdtp
from tpjax.pruning import sdtp_decoder
from tpjax.training import config_checks
from tpjax.training import errors

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm_sdtp.py", "Config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/smollm_sdtp", "Output directory.")


RECIPES = ("teacher_forcing", "pruned")


class NonFiniteLoss(errors.RunFailed):
  """A training step's loss is NaN or infinite; nothing is written."""


class StepOutOfMemory(errors.RunFailed):
  """A training step asked for more memory than there is; nothing is written."""


def config_problems(config) -> list[str]:
  """One sentence per bad `config.train` (or saliency target) value; empty when it
  can run."""
  tc, found = config.train, []

  def need(ok: bool, field: str, allowed: str) -> None:
    if not ok:
      found.append(f"config.train.{field}={tc.get(field)!r} is not allowed ({allowed})")

  number = config_checks.is_number
  count = lambda value: config_checks.is_int(value) and value >= 1

  need(tc.get("recipe") in RECIPES, "recipe", " or ".join(RECIPES))
  target = sdtp_decoder.saliency_target(config)
  if target not in sdtp_decoder.SALIENCY_TARGETS:
    found.append(f"config.saliency.target={target!r} is not allowed "
                 f"({' or '.join(sdtp_decoder.SALIENCY_TARGETS)})")
  need(count(tc.steps), "steps", "an integer of at least 1")
  need(count(tc.batch_size), "batch_size", "an integer of at least 1")
  need(count(accumulate(config)), "accumulate", "an integer of at least 1")
  need(count(tc.holdout_windows) and (not count(config.saliency.max_windows) or
                                      tc.holdout_windows < config.saliency.max_windows),
       "holdout_windows", "at least 1 and fewer than config.saliency.max_windows")
  need(number(tc.learning_rate) and tc.learning_rate > 0, "learning_rate",
       "a positive number")
  for field in ("mse_weight", "rank_weight", "lm_weight", "kd_weight"):
    need(number(tc.get(field)) and tc.get(field) >= 0, field, "a number >= 0")
  need(number(tc.get("gumbel_tau")) and tc.get("gumbel_tau") > 0, "gumbel_tau",
       "a positive temperature")
  if tc.get("recipe") == "pruned" and not found:
    need(tc.lm_weight + tc.kd_weight > 0, "kd_weight", "with lm_weight 0 the pruned "
         "recipe needs kd_weight > 0: its masks learn only through the LM and KD terms")
  return found


def check_config(config) -> None:
  """Raises config_checks.ConfigError listing every bad `config.train` value."""
  found = config_problems(config)
  if found:
    raise config_checks.ConfigError("; ".join(found) + ".")


def initial_predictors(workdir, cfg, schedule):
  """The trained predictors in `workdir` to start from (None without a workdir).

  Raises:
    config_checks.ConfigError: if they sit at other layers than `schedule`'s.
  """
  if not workdir:
    return None
  params, theirs, _ = sdtp_decoder.load_predictors(workdir, cfg)
  if tuple(theirs.layers) != tuple(schedule.layers):
    raise config_checks.ConfigError(
        f"config.train.init_from={workdir!r} holds predictors at layers "
        f"{list(theirs.layers)}, this run's stages are at {list(schedule.layers)}.")
  return params


def schedule_from(config) -> sdtp_decoder.Schedule:
  s = config.schedule
  return sdtp_decoder.default_schedule(30 if s.get("num_layers") is None else s.num_layers,
                                       start=s.start, every=s.every, ratio=s.ratio,
                                       keep_first=s.keep_first, keep_last=s.keep_last,
                                       step=s.step)


def training_windows(tokenizer, articles, window: int, per_article: int,
                     limit: int) -> np.ndarray:
  """<int32>[N, window]: consecutive non-overlapping windows from each article's start."""
  rows = []
  for article in articles:
    ids = tokenizer.encode(article.text)
    for w in range(min(per_article, len(ids) // window)):
      rows.append(ids[w * window:(w + 1) * window])
  return np.asarray(rows[:limit], np.int32)


def always_mask(window: int, schedule: sdtp_decoder.Schedule) -> np.ndarray:
  """<bool>[window]: the window's always-kept tokens (first / last), left out of losses."""
  n = jnp.array([window])
  return np.asarray(sdtp_decoder.always_kept(jnp.arange(window)[None], n,
                                             schedule.keep_first, schedule.keep_last))[0]


def compute_targets(model, params, windows: np.ndarray, schedule, config):
  """Saliency targets of training windows (sdtp_decoder.prompt_saliency).

  T is the next-token loss of the predictions at the window's last
  `config.saliency.target_last` positions, which must be always kept
  (sdtp_decoder.target_weights), and the `config.saliency.norm` normalisation runs
  over the prunable tokens only; always-kept tokens get target 0.

  Returns:
    (hiddens <float16>[stages, N, window, d], targets <float32>[stages, N, window],
    T per window <float32>[N]).
  """
  cfg = model.config
  sal = config.saliency
  target = sdtp_decoder.saliency_target(config)
  sdtp_decoder.target_weights(windows.shape[1], schedule, sal.target_last)  # checks

  @jax.jit
  def one(params, ids):  # params as an argument: closed over, XLA would constant-fold them
    targets, hiddens, value = sdtp_decoder.prompt_saliency(
        cfg, params, ids, schedule, sal.target_last, sal.norm, target)
    return targets[:, 0], hiddens[:, 0].astype(jnp.float16), value

  hiddens, targets, values = [], [], []
  start = time.time()
  for i, ids in enumerate(windows):
    t, h, value = one(params, jnp.asarray(ids[None]))
    targets.append(np.asarray(t))
    hiddens.append(np.asarray(h))
    values.append(float(value))
    logging.info("saliency window %d/%d: T=%.3f (%.0f s)", i + 1, len(windows),
                 float(value), time.time() - start)
  return np.stack(hiddens, 1), np.stack(targets, 1), np.asarray(values, np.float32)


def stage_losses(score_params, hiddens, targets, prunable, config):
  """Per-stage (mse, rank) means; hiddens [S, B, L, d], targets [S, B, L]."""
  logits = [sdtp_decoder.predictor_logits(p, hiddens[s]) for s, p in enumerate(score_params)]
  return saliency_losses(logits, targets, prunable)


def saliency_losses(logits, targets, prunable):
  """Per-stage means of the MSE and ranking losses against the saliency targets.

  Args:
    logits: per stage <float32>[B, L, 2] predictor logits.
    targets: <float32>[S, B, L].
    prunable: <bool>[B, L] (every stage) or [S, B, L], the tokens that count.
  Returns:
    (mse <float32>[S], rank <float32>[S]).
  """
  mse, rank = [], []
  for s, lg in enumerate(logits):
    valid = prunable[s] if prunable.ndim == 3 else prunable
    mse.append(jnp.mean(sdtp.mse_loss(sdtp.keep_probability(lg), targets[s], valid)))
    # Ranked on the keep-minus-drop logit: the MSE pulls pi towards the mostly tiny
    # targets, where softmax saturates and a ranking on pi stalls at ln 2.
    rank.append(jnp.mean(sdtp.ranking_loss(sdtp.keep_score(lg), targets[s], valid)))
  return jnp.stack(mse), jnp.stack(rank)


def topk_agreement(score_params, hiddens, targets, prunable, schedule) -> list[float]:
  """Per stage: the fraction of the saliency top-k (k = the stage's keep ratio of the
  prunable tokens) that the predictor's top-k also picks."""
  out = []
  for s, p in enumerate(score_params):
    score = np.asarray(sdtp.keep_score(sdtp_decoder.predictor_logits(
        p, jnp.asarray(hiddens[s], jnp.float32))))
    hits = []
    for b in range(score.shape[0]):
      idx = np.flatnonzero(prunable[b])
      k = max(1, int(round(schedule.keep[s] * len(idx))))
      ours = set(idx[np.argsort(-score[b, idx])[:k]])
      best = set(idx[np.argsort(-targets[s][b, idx])[:k]])
      hits.append(len(ours & best) / k)
    out.append(float(np.mean(hits)))
  return out


def accumulate(config) -> int:
  """Micro-batches per Adam update (config.train.accumulate; configs without it: 1)."""
  return config.train.get("accumulate", 1)


def optimiser(config) -> optax.GradientTransformation:
  """Adam at config.train.learning_rate; with train.accumulate = k > 1 it averages the
  gradients of k consecutive micro-batches and updates once (optax.MultiSteps)."""
  tx = optax.adam(config.train.learning_rate)
  k = accumulate(config)
  return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation() if k > 1 else tx


def _initial(init, cfg, schedule, config) -> list:
  if init is not None:
    return init
  return sdtp_decoder.init_predictors(cfg, schedule, jax.random.PRNGKey(config.seed))


def fit(params, tx, step, n_train: int, config, evaluate, recipe: str):
  """The Adam loop both recipes share: random batches of training windows, a curve
  every 25 updates, held-out evaluation before and after.

  Each of the config.train.steps updates draws batch_size x accumulate windows (without
  replacement when there are enough) and feeds them to `step` in `accumulate`
  micro-batches of batch_size; `tx` (`optimiser`) updates after the last one.

  Args:
    params: the initial per-stage Predictor parameters.
    tx: the optax optimiser.
    step: (params, opt_state, pick <int>[batch_size] window indices, micro-step index)
      -> (params, opt_state, loss <float32>[], parts {name: array}).
    n_train: number of training windows.
    config: the run config (config.train.steps, batch_size, accumulate, progress_bar;
      seed).
    evaluate: params -> dict of held-out metrics.
    recipe: the recipe's name, for messages.
  Returns:
    (params, log {"before", "curve", "after"}).
  Raises:
    NonFiniteLoss: at the first step whose loss is NaN or infinite.
    StepOutOfMemory: when a step runs out of memory.
  """
  tc = config.train
  opt = tx.init(params)
  log = {"before": evaluate(params), "curve": []}
  rng = np.random.RandomState(config.seed)
  bar = tqdm.tqdm(total=tc.steps, desc=recipe, unit="step", dynamic_ncols=True,
                  disable=not tc.get("progress_bar", False))
  k = accumulate(config)
  for i in range(tc.steps):
    picks = rng.choice(n_train, tc.batch_size * k, replace=n_train < tc.batch_size * k)
    try:
      losses = []
      for j, pick in enumerate(np.split(picks, k)):
        params, opt, loss, parts = step(params, opt, pick, i * k + j)
        losses.append(float(loss))
      loss = float(np.mean(losses))
    except jax.errors.JaxRuntimeError as err:
      if "RESOURCE_EXHAUSTED" not in str(err):
        raise
      bar.close()
      raise StepOutOfMemory(
          f"SDTP decoder training ({recipe} recipe), step {i + 1} with "
          f"config.train.batch_size={tc.batch_size}: {str(err).splitlines()[0]} No "
          "predictors were written; lower config.train.batch_size (and raise "
          "config.train.accumulate to keep the windows per update).") from err
    if not math.isfinite(loss):
      bar.close()
      raise NonFiniteLoss(
          f"SDTP decoder training ({recipe} recipe), step {i + 1}: the loss is {loss}. "
          "Training stopped and no predictors were written; try a lower "
          "config.train.learning_rate.")
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if (i + 1) % 25 == 0 or i == 0:
      means = {k: float(jnp.mean(v)) for k, v in parts.items()}
      log["curve"].append({"step": i + 1, "loss": loss, **means})
      logging.info("step %d: loss %.4f (per-stage means: %s)", i + 1, loss,
                   ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
  bar.close()
  log["after"] = evaluate(params)
  if "topk_agreement" in log["after"]:
    logging.info("held-out top-k agreement with saliency per stage: before %s, after %s",
                 np.round(log["before"]["topk_agreement"], 3).tolist(),
                 np.round(log["after"]["topk_agreement"], 3).tolist())
  return params, log


def train_predictors(hiddens, targets, prunable, schedule, config, cfg, init=None):
  """The 'teacher_forcing' recipe: Adam on the cached unpruned hidden states.

  Args:
    hiddens: <float16 or float32>[S, N, L, d] hidden states entering the stages.
    targets: <float32>[S, N, L] saliency targets; the last holdout_windows held out.
    prunable: <bool>[L] the tokens the losses count.
    init: per-stage Predictor parameters to start from (default: a seeded init).
  Returns:
    (per-stage Predictor parameters, log dict).
  """
  tc = config.train
  held = tc.holdout_windows
  train_h, train_t = hiddens[:, :-held], targets[:, :-held]
  val_h, val_t = hiddens[:, -held:], targets[:, -held:]
  params = _initial(init, cfg, schedule, config)
  tx = optimiser(config)
  mask = jnp.broadcast_to(jnp.asarray(prunable), (tc.batch_size, prunable.shape[0]))

  def loss_fn(p, h, t):
    mse, rank = stage_losses(p, h, t, mask, config)
    return tc.mse_weight * jnp.sum(mse) + tc.rank_weight * jnp.sum(rank), (mse, rank)

  @jax.jit
  def update(p, o, h, t):
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, h, t)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, parts

  def step(p, o, pick, i):
    del i
    p, o, loss, (mse, rank) = update(p, o, jnp.asarray(train_h[:, pick], jnp.float32),
                                     jnp.asarray(train_t[:, pick]))
    return p, o, loss, {"mse": mse, "rank": rank}

  def evaluate(p):
    vmask = jnp.broadcast_to(jnp.asarray(prunable), (val_h.shape[1], prunable.shape[0]))
    mse, rank = stage_losses(p, jnp.asarray(val_h, jnp.float32), jnp.asarray(val_t),
                             vmask, config)
    agree = topk_agreement(p, val_h, val_t, np.asarray(vmask), schedule)
    return {"mse": np.asarray(mse).tolist(), "rank": np.asarray(rank).tolist(),
            "topk_agreement": agree}

  return fit(params, tx, step, train_h.shape[1], config, evaluate, "teacher_forcing")


# ------------------------------------------------------------ the 'pruned' recipe

# The unpruned model through the same masked forward (no stage).
NO_PRUNING = sdtp_decoder.Schedule(layers=(), keep=())


def tail_span(window: int, schedule, target_last: float) -> tuple[int, int]:
  """(start, end): the LM and KD terms count the predictions made at positions
  start .. end - 1 of a window, the saliency target's region
  (sdtp_decoder.target_weights: inside the always-kept tail, so no prunable token's
  own prediction counts, as at inference where only the prompt's end predicts)."""
  where = np.flatnonzero(sdtp_decoder.target_weights(window, schedule, target_last))
  return int(where[0]), int(where[-1]) + 1


def tail_log_probs(cfg, params, hidden: jax.Array, span: tuple[int, int]) -> jax.Array:
  """Log-softmax of the head at the span's positions: hidden <float32>[B, L, d] (the
  last layer's output) -> <float32>[B, end - start, vocab]."""
  model = decoder_lib.DecoderModel(cfg)
  logits = model.apply({"params": params}, hidden[:, span[0]:span[1]], method=model.head)
  return jax.nn.log_softmax(logits, axis=-1)


def teacher_tail(cfg, params, ids: jax.Array, span: tuple[int, int]) -> jax.Array:
  """The unpruned model's last-layer output at the span's positions: ids <int32>[B, L]
  -> <float32>[B, end - start, d]. It does not change during training, so the
  'pruned' recipe computes it once per window instead of once per step."""
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  full, _, _ = sdtp_decoder.masked_prefill(cfg, params, ids, positions,
                                           jnp.ones(ids.shape, bool), NO_PRUNING, None)
  return full[:, span[0]:span[1]]


def lm_loss(logp: jax.Array, ids: jax.Array, span: tuple[int, int]) -> jax.Array:
  """Mean next-token loss over the span: logp <float32>[B, T, V] (`tail_log_probs`),
  ids <int32>[B, L] -> <float32>[B]."""
  labels = ids[:, span[0] + 1:span[1] + 1]
  return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0], axis=-1)


def kd_loss(teacher_logp: jax.Array, student_logp: jax.Array) -> jax.Array:
  """KL(teacher || student) per prediction, mean over the span.

  Forward KL, the distillation direction: the unpruned model's distribution weighs the
  log ratio, so the pruned model is pushed to cover what the unpruned one predicts.

  Args:
    teacher_logp, student_logp: <float32>[B, T, V] log-probabilities.
  Returns:
    <float32>[B].
  """
  p = jnp.exp(teacher_logp)
  return jnp.mean(jnp.sum(p * (teacher_logp - student_logp), axis=-1), axis=-1)


def pruned_loss(score_params, params, ids, teacher, targets, rng, schedule, span, config,
                cfg):
  """The 'pruned' recipe's loss on a batch of windows, the model pruned by the modules:

      lm_weight LM + kd_weight KL(unpruned || pruned)
        + sum_s (mse_weight MSE_s + rank_weight rank_s)

  LM and KL count the predictions in `span` (the always-kept tail). Stage masks come
  from sdtp_decoder.predictor_mask_fn: the straight-through Gumbel top-k with an rng
  (cumulative, exactly the inference kept counts), the inference decision without one
  (evaluation). MSE and ranking against the unpruned model's saliency targets as in
  teacher forcing, but on the pruned model's hidden states and over the tokens live at
  the stage that are not always kept. The backbone is frozen (stop_gradient): only
  score_params get gradients.

  Args:
    score_params: per-stage Predictor parameters.
    params: the decoder's parameters.
    ids: <int32>[B, L] windows.
    teacher: <float32>[B, T, d] their `teacher_tail`.
    targets: <float32>[S, B, L] saliency targets.
    rng: PRNG key, or None for the inference decision.
    schedule: the Schedule.
    span: `tail_span` of the window.
    config: the run config (config.train: lm_weight, kd_weight, mse_weight,
      rank_weight, gumbel_tau, remat).
    cfg: the DecoderConfig.
  Returns:
    (loss <float32>[], {"lm", "kd": <float32>[]; "mse", "rank", "kept": <float32>[S]},
    kept the mean fraction of each window left after each stage).
  """
  tc = config.train
  params = jax.lax.stop_gradient(params)
  batch, window = ids.shape
  positions = jnp.broadcast_to(jnp.arange(window), ids.shape)
  valid = jnp.ones(ids.shape, bool)
  teacher = jax.lax.stop_gradient(
      tail_log_probs(cfg, params, teacher, (0, span[1] - span[0])))
  n = jnp.full((batch,), window, jnp.int32)
  logits = []
  mask_fn = sdtp_decoder.predictor_mask_fn(schedule, score_params, n, rng, tc.gumbel_tau,
                                           logits)
  hidden, masks, _ = sdtp_decoder.masked_prefill(cfg, params, ids, positions, valid,
                                                 schedule, mask_fn, remat=tc.remat)
  student = tail_log_probs(cfg, params, hidden, span)
  lm = jnp.mean(lm_loss(student, ids, span))
  kd = jnp.mean(kd_loss(teacher, student))
  always = sdtp_decoder.always_kept(positions, n, schedule.keep_first, schedule.keep_last)
  live = jnp.concatenate([valid[None], masks[:-1] > 0.5])  # [S, B, L] entering stage s
  mse, rank = saliency_losses(logits, targets, live & ~always)
  loss = (tc.lm_weight * lm + tc.kd_weight * kd + tc.mse_weight * jnp.sum(mse)
          + tc.rank_weight * jnp.sum(rank))
  return loss, {"lm": lm, "kd": kd, "mse": mse, "rank": rank,
                "kept": jnp.mean(masks, axis=(1, 2))}


def pruned_step(tx, schedule, span, config, cfg):
  """The 'pruned' recipe's training step, jitted and pure:

      (score_params, opt_state, params, ids <int32>[B, L], teacher <float32>[B, T, d],
       targets <float32>[S, B, L], rng) -> (score_params, opt_state, loss, parts of
       `pruned_loss`)

  The backbone `params` is an argument (closed over, XLA would constant-fold it) and
  gets no update."""
  def step(score_params, opt, params, ids, teacher, targets, rng):
    (loss, parts), grads = jax.value_and_grad(pruned_loss, has_aux=True)(
        score_params, params, ids, teacher, targets, rng, schedule, span, config, cfg)
    updates, opt = tx.update(grads, opt, score_params)
    return optax.apply_updates(score_params, updates), opt, loss, parts
  return jax.jit(step)


def train_pruned(model_params, windows, targets, hiddens, schedule, config, cfg,
                 init=None):
  """The 'pruned' recipe: Adam on the modules through the pruned model (`pruned_loss`).

  Args:
    model_params: the frozen decoder's parameters.
    windows: <int32>[N, L] token windows; the last holdout_windows held out.
    targets: <float32>[S, N, L] their saliency targets (`compute_targets`).
    hiddens: <float16>[S, N, L, d] their unpruned hidden states, or None; with them the
      held-out top-k agreement is reported as for teacher forcing.
    schedule: the Schedule (its kept counts are those trained with).
    init: per-stage Predictor parameters to start from (default: a seeded init).
  Returns:
    (per-stage Predictor parameters, log dict; held-out metrics are `pruned_loss`'s
    parts under the inference decision).
  """
  tc = config.train
  held = tc.holdout_windows
  span = tail_span(windows.shape[1], schedule, config.saliency.target_last)
  params = _initial(init, cfg, schedule, config)
  tx = optimiser(config)
  update = pruned_step(tx, schedule, span, config, cfg)
  key = jax.random.PRNGKey(config.seed)
  tail = jax.jit(lambda mp, ids: teacher_tail(cfg, mp, ids, span))
  teachers = np.concatenate([np.asarray(tail(model_params, windows[i:i + tc.batch_size]))
                             for i in range(0, len(windows), tc.batch_size)])
  train_ids, train_t = windows[:-held], targets[:, :-held]
  val_ids, val_t = jnp.asarray(windows[-held:]), jnp.asarray(targets[:, -held:])

  def step(p, o, pick, i):
    return update(p, o, model_params, jnp.asarray(train_ids[pick]),
                  jnp.asarray(teachers[pick]), jnp.asarray(train_t[:, pick]),
                  jax.random.fold_in(key, i))

  held_out = jax.jit(lambda p, mp, ids, te, t: pruned_loss(p, mp, ids, te, t, None,
                                                          schedule, span, config, cfg))

  def evaluate(p):
    loss, parts = held_out(p, model_params, val_ids, jnp.asarray(teachers[-held:]), val_t)
    out = {"loss": float(loss), **{k: np.asarray(v).tolist() for k, v in parts.items()}}
    if hiddens is not None:
      prunable = np.broadcast_to(~always_mask(windows.shape[1], schedule),
                                 (held, windows.shape[1]))
      out["topk_agreement"] = topk_agreement(p, hiddens[:, -held:], targets[:, -held:],
                                             prunable, schedule)
    return out

  return fit(params, tx, step, len(train_ids), config, evaluate, "pruned")


def main(argv):
  del argv
  start = time.time()
  config = _CONFIG.value
  workdir = _WORKDIR.value
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  model, params, tokenizer = pretrained.load_pretrained(config.model)
  cfg = model.config
  with config.unlocked():
    config.schedule.num_layers = cfg.num_hidden_layers
  schedule = schedule_from(config)
  logging.info("schedule: layers %s, keep %s", schedule.layers,
               np.round(schedule.keep, 3).tolist())
  init = initial_predictors(config.train.get("init_from"), cfg, schedule)  # fail early
  train_articles, _ = squad_docs.split(squad_docs.load_articles(config.squad_path))
  cache = os.path.join(workdir, "targets.npz")
  sal = config.saliency
  # What the cached targets depend on: a cache made under another definition is
  # recomputed, not reused.
  target_key = json.dumps({"window": sal.window, "target_last": sal.target_last,
                       "target": sdtp_decoder.saliency_target(config),
                       "norm": sal.norm, "layers": schedule.layers,
                       "keep_first": schedule.keep_first, "keep_last": schedule.keep_last,
                       "windows_per_article": sal.windows_per_article,
                       "max_windows": sal.max_windows}, sort_keys=True)
  # The same windows every run (deterministic), so a reused cache's rows are theirs.
  windows = training_windows(tokenizer, train_articles, sal.window,
                             sal.windows_per_article, sal.max_windows)
  logging.info("%d windows of %d tokens from %d training articles", len(windows),
               sal.window, len(train_articles))
  data = np.load(cache) if os.path.isfile(cache) else None
  if data is not None and "recipe" in data and str(data["recipe"]) == target_key:
    hiddens, targets = data["hiddens"], data["targets"]
    logging.info("reusing %s (%d windows)", cache, hiddens.shape[1])
  else:
    if data is not None:
      logging.info("%s was made with another target recipe: recomputing", cache)
    hiddens, targets, _ = compute_targets(model, params, windows, schedule, config)
    np.savez(cache, hiddens=hiddens, targets=targets, recipe=np.asarray(target_key))
  training = config.train.recipe
  logging.info("training recipe: %s", training)
  if training == "pruned":
    score_params, log = train_pruned(params, windows, targets, hiddens, schedule, config,
                                     cfg, init)
  else:
    prunable = ~always_mask(hiddens.shape[2], schedule)
    score_params, log = train_predictors(hiddens, targets, prunable, schedule, config, cfg,
                                         init)
  sdtp_decoder.save_predictors(workdir, score_params, schedule, {
      "model": config.model, "recipe": training,
      "train_articles": [a.title for a in train_articles],
      "windows": int(hiddens.shape[1]), "config": config.to_dict(), "log": log,
      "wall_time_s": round(time.time() - start)})
  logging.info("wrote %s", workdir)


if __name__ == "__main__":
  app.run(main)
