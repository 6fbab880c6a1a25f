"""Trains SDTP prediction modules for a decoder's prefill (issue 11 part B).

    python -m tpjax.training.sdtp_decoder --config=configs/smollm_sdtp.py \\
        --workdir=runs/smollm_sdtp

1. Saliency targets: windows of the training articles (`saliency.window` tokens) go
   through the frozen decoder once with zero probes at every pruning location; one
   backward pass gives gradient times input at all of them (sdtp.saliency_targets).
   T is the loss of the predictions made inside the always-kept tail
   (`saliency.target_last` <= `schedule.keep_last`), so a prunable token's saliency
   is its influence on other tokens; targets are normalised over prunable tokens
   only. The hidden states at the locations are kept too (cached in
   <workdir>/targets.npz, reused when present; delete it after changing the target).
2. The per-stage predictors (sdtp.Predictor) learn those targets with the MSE and
   ranking losses (unit weights; the ranking on the keep-minus-drop logit, which
   inference ranks by) on the cached hidden states; the backbone is never
   updated. Deviation from the paper, for CPU cost: no task loss and no simulated
   masks, i.e. each module sees the unpruned model's hidden states (teacher forcing)
   instead of those of the already-pruned model.
3. Writes predictors.msgpack and sdtp.json (schedule, losses, held-out agreement).
"""

import json
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

from tpjax.data import squad_docs
from tpjax.models import pretrained
from tpjax.pruning import sdtp
from tpjax.pruning import sdtp_decoder

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm_sdtp.py", "Config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/smollm_sdtp", "Output directory.")


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
  sdtp_decoder.target_weights(windows.shape[1], schedule, sal.target_last)  # checks

  @jax.jit
  def one(params, ids):  # params as an argument: closed over, XLA would constant-fold them
    targets, hiddens, value = sdtp_decoder.prompt_saliency(
        cfg, params, ids, schedule, sal.target_last, sal.norm)
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
  mse, rank = [], []
  for s, p in enumerate(score_params):
    logits = sdtp_decoder.predictor_logits(p, hiddens[s])
    mse.append(jnp.mean(sdtp.mse_loss(sdtp.keep_probability(logits), targets[s], prunable)))
    # Ranked on the keep-minus-drop logit: the MSE pulls pi towards the mostly tiny
    # targets, where softmax saturates and a ranking on pi stalls at ln 2.
    rank.append(jnp.mean(sdtp.ranking_loss(sdtp.keep_score(logits), targets[s], prunable)))
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


def train_predictors(hiddens, targets, prunable, schedule, config, cfg):
  """Adam on the cached windows; returns (params, log dict)."""
  tc = config.train
  held = tc.holdout_windows
  train_h, train_t = hiddens[:, :-held], targets[:, :-held]
  val_h, val_t = hiddens[:, -held:], targets[:, -held:]
  params = sdtp_decoder.init_predictors(cfg, schedule, jax.random.PRNGKey(config.seed))
  tx = optax.adam(tc.learning_rate)
  opt = tx.init(params)
  mask = jnp.broadcast_to(jnp.asarray(prunable), (tc.batch_size, prunable.shape[0]))

  def loss_fn(p, h, t):
    mse, rank = stage_losses(p, h, t, mask, config)
    return tc.mse_weight * jnp.sum(mse) + tc.rank_weight * jnp.sum(rank), (mse, rank)

  @jax.jit
  def step(p, o, h, t):
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, h, t)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, parts

  def evaluate(p):
    vmask = jnp.broadcast_to(jnp.asarray(prunable), (val_h.shape[1], prunable.shape[0]))
    mse, rank = stage_losses(p, jnp.asarray(val_h, jnp.float32), jnp.asarray(val_t),
                             vmask, config)
    agree = topk_agreement(p, val_h, val_t, np.asarray(vmask), schedule)
    return {"mse": np.asarray(mse).tolist(), "rank": np.asarray(rank).tolist(),
            "topk_agreement": agree}

  log = {"before": evaluate(params), "curve": []}
  rng = np.random.RandomState(config.seed)
  n = train_h.shape[1]
  for i in range(tc.steps):
    pick = rng.choice(n, tc.batch_size, replace=n < tc.batch_size)
    params, opt, loss, (mse, rank) = step(params, opt,
                                          jnp.asarray(train_h[:, pick], jnp.float32),
                                          jnp.asarray(train_t[:, pick]))
    if (i + 1) % 25 == 0 or i == 0:
      log["curve"].append({"step": i + 1, "loss": float(loss),
                           "mse": float(jnp.mean(mse)), "rank": float(jnp.mean(rank))})
      logging.info("step %d: loss %.4f (mse %.4f, rank %.4f per stage)", i + 1,
                   float(loss), float(jnp.mean(mse)), float(jnp.mean(rank)))
  log["after"] = evaluate(params)
  logging.info("held-out top-k agreement with saliency per stage: before %s, after %s",
               np.round(log["before"]["topk_agreement"], 3).tolist(),
               np.round(log["after"]["topk_agreement"], 3).tolist())
  return params, log


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  model, params, tokenizer = pretrained.load_pretrained(config.model)
  cfg = model.config
  with config.unlocked():
    config.schedule.num_layers = cfg.num_hidden_layers
  schedule = schedule_from(config)
  logging.info("schedule: layers %s, keep %s", schedule.layers,
               np.round(schedule.keep, 3).tolist())
  train_articles, _ = squad_docs.split(squad_docs.load_articles(config.squad_path))
  cache = os.path.join(workdir, "targets.npz")
  sal = config.saliency
  # What the cached targets depend on: a cache made under another definition is
  # recomputed, not reused.
  recipe = json.dumps({"window": sal.window, "target_last": sal.target_last,
                       "norm": sal.norm, "layers": schedule.layers,
                       "keep_first": schedule.keep_first, "keep_last": schedule.keep_last,
                       "windows_per_article": sal.windows_per_article,
                       "max_windows": sal.max_windows}, sort_keys=True)
  data = np.load(cache) if os.path.isfile(cache) else None
  if data is not None and "recipe" in data and str(data["recipe"]) == recipe:
    hiddens, targets = data["hiddens"], data["targets"]
    logging.info("reusing %s (%d windows)", cache, hiddens.shape[1])
  else:
    if data is not None:
      logging.info("%s was made with another target recipe: recomputing", cache)
    windows = training_windows(tokenizer, train_articles, sal.window,
                               sal.windows_per_article, sal.max_windows)
    logging.info("%d windows of %d tokens from %d training articles", len(windows),
                 sal.window, len(train_articles))
    hiddens, targets, _ = compute_targets(model, params, windows, schedule, config)
    np.savez(cache, hiddens=hiddens, targets=targets, recipe=np.asarray(recipe))
  prunable = ~always_mask(hiddens.shape[2], schedule)
  score_params, log = train_predictors(hiddens, targets, prunable, schedule, config, cfg)
  sdtp_decoder.save_predictors(workdir, score_params, schedule, {
      "model": config.model, "train_articles": [a.title for a in train_articles],
      "windows": int(hiddens.shape[1]), "config": config.to_dict(), "log": log})
  logging.info("wrote %s", workdir)


if __name__ == "__main__":
  app.run(main)
