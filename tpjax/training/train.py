"""Train state, pure train/eval steps, and the stage loop.

A run is a sequence of stages (`config.stages`, e.g. finetune -> soft -> hard), each in
its own sub-directory of the workdir with its own checkpoints; a finished stage is
skipped on rerun and hands its best parameters to the next one.

'Best' is judged on a seeded slice held out of the training set
(`config.data.selection_fraction`), never on dev: dev is evaluated once per stage, at
the parameters the stage hands over, and reported.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from tpjax.training import checkpoints
from tpjax.training import config_checks
from tpjax.training import errors
from tpjax.training import fingerprint
from tpjax.data import metrics as metrics_lib
from tpjax.training import parallel
from tpjax.training import run_log
from tpjax.training import selection
from tpjax.data import batching
from tpjax.data import glue
from tpjax.data import tokenization
from tpjax.models import classifier
from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base as pruning_base
from tpjax.pruning import flops as flops_lib
from tpjax.pruning import registry


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any       # {'model': ..., 'pruning': ...}
  opt_state: Any


# ----------------------------------------------------------------------- optimizer


def _decay_mask(params: Any) -> Any:
  """No weight decay on biases and LayerNorm scales."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in ("bias", "scale"), params)


def stage_optimizer_setting(settings: ml_collections.ConfigDict,
                            train: ml_collections.ConfigDict, name: str) -> Any:
  """A stage's own optimizer setting (warmup_ratio, weight_decay, clip_mode), or the
  run-wide one in `config.train` when the stage leaves it None."""
  value = settings.get(name)
  return train[name] if value is None else value


def make_optimizer(settings: ml_collections.ConfigDict, train: ml_collections.ConfigDict,
                   total_steps: int,
                   pruning_tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """AdamW with warmup + linear decay for the model; `pruning_tx` for params['pruning'].

  Args:
    settings: the stage's settings (learning_rate and optional warmup_ratio,
      weight_decay, clip_mode overrides).
    train: shared settings (warmup_ratio, weight_decay, grad_clip, clip_mode).
    total_steps: optimizer steps in the stage.
    pruning_tx: the method's optimizer (`Method.pruning_optimizer`), or
      `optax.set_to_zero()` where pruning parameters are frozen.
  """
  setting = functools.partial(stage_optimizer_setting, settings, train)
  warmup = int(setting("warmup_ratio") * total_steps)
  model_lr = optax.linear_schedule(settings.learning_rate, 0.0, max(total_steps, 1))
  if warmup:
    model_lr = optax.join_schedules(
        [optax.linear_schedule(0.0, settings.learning_rate, warmup),
         optax.linear_schedule(settings.learning_rate, 0.0, max(total_steps - warmup, 1))],
        [warmup])
  model_tx = optax.chain(
      optax.clip_by_global_norm(train.grad_clip),
      optax.adamw(model_lr, weight_decay=setting("weight_decay"), mask=_decay_mask))
  tx = optax.multi_transform({"model": model_tx, "pruning": pruning_tx},
                             {"model": "model", "pruning": "pruning"})
  clip_mode = setting("clip_mode")
  if clip_mode == "joint":
    # One norm over model and pruning gradients together (the LTP reference's
    # torch clip_grad_norm_); the per-group clips above are then no-ops.
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), tx)
  if clip_mode != "per_group":
    raise ValueError(f"clip_mode {clip_mode!r} is not 'per_group' or 'joint'.")
  return tx


# --------------------------------------------------------------------------- steps


def train_step(state: TrainState, batch: dict, rng: jax.Array, teacher: Optional[Any],
               reduce: Callable[[Any], Any], *, model: encoder_lib.EncoderModel,
               tx: optax.GradientTransformation, method: pruning_base.Method,
               stage: str, total_steps: int) -> tuple[TrainState, dict]:
  """One optimizer step on (this device's slice of) a batch.

  The loss (`method.loss`) is the weighted mean over the *global* batch: each device
  divides its weighted sum by the global weight, and `reduce` (a sum over devices,
  identity on one) combines gradients, so any device count gives the same update.
  `teacher` (model parameters or None) is run deterministically and without
  gradients; its output goes to `method.loss`.
  """
  rng = jax.random.fold_in(rng, state.step)
  prune_rng = jax.random.fold_in(rng, 1)
  weights = batch["weights"]
  total_weight = jnp.maximum(reduce(jnp.sum(weights)), 1.0)
  inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  teacher_out = None
  if teacher is not None:
    teacher_out = jax.lax.stop_gradient(method.teacher_output(
        model, jax.lax.stop_gradient(teacher), batch))
  frozen = method.model_frozen(stage)
  progress = state.step.astype(jnp.float32) / total_steps
  mean = lambda x: jnp.sum(x * weights) / total_weight

  def loss_fn(params):
    model_params = jax.lax.stop_gradient(params["model"]) if frozen else params["model"]
    out = model.apply({"params": model_params}, *inputs, deterministic=False,
                      rngs={"dropout": rng},
                      prune_fn=method.prune_fn(params["pruning"], stage, prune_rng),
                      attention_softmax=method.attention_softmax(stage))
    loss, terms = method.loss(params["pruning"], out, teacher_out, batch, stage, progress,
                              model.num_labels)
    return mean(loss), {"loss": mean(loss), **{k: mean(v) for k, v in terms.items()}}

  grads, aux = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = reduce(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = method.post_update(optax.apply_updates(state.params, updates), state.params)
  if frozen:  # weight decay would still move it
    params = {**params, "model": state.params["model"]}
  metrics = reduce(aux)
  metrics["grad_norm"] = optax.global_norm(grads["model"])
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: dict, batch: dict, *, model: encoder_lib.EncoderModel,
              method: pruning_base.Method, stage: str) -> dict:
  """Per-example outputs: logits and tokens entering each layer / kept after it."""
  out = model.apply({"params": params["model"]}, batch["input_ids"],
                    batch["attention_mask"], batch["token_type_ids"], deterministic=True,
                    prune_fn=method.prune_fn(params["pruning"], stage))
  real = batch["attention_mask"].astype(jnp.float32)
  masks = out.token_masks or (real,) * model.config.num_hidden_layers
  kept = jnp.stack([jnp.sum(m > 0, axis=-1) for m in masks], axis=-1)
  return {"logits": out.logits, "kept": kept.astype(jnp.int32),
          "length": jnp.sum(real, axis=-1).astype(jnp.int32)}


# ------------------------------------------------------------------------ evaluate


class NonFiniteError(errors.RunFailed):
  """A loss, gradient norm or logit is NaN or infinite; nothing after it is kept."""


def evaluate(p_eval: Callable, params: dict, data: batching.Encoded, task: str,
             config: ml_collections.ConfigDict, mesh, pad_id: int,
             model_config: config_lib.EncoderConfig, where: str = "") -> dict[str, Any]:
  """GLUE metrics and FLOPs over a split; every example counted exactly once.

  Raises:
    NonFiniteError: some logits are not finite (`where` names the model in the
      message), so no metric of a broken model is ever reported.
  """
  info = glue.TASKS[task]
  batch_size = parallel.global_batch_size(config.data.per_device_eval_batch_size, mesh)
  n = len(data) if config.data.max_eval_examples is None else min(
      config.data.max_eval_examples, len(data))
  logits = np.zeros((n, info.num_labels), np.float32)
  kept = np.zeros((n, model_config.num_hidden_layers), np.int32)
  lengths = np.zeros((n,), np.int32)
  seen = np.zeros((n,), bool)
  for batch in batching.eval_batches(data, config.data.buckets, batch_size, pad_id, n):
    index = batch.pop("index")
    out = parallel.to_host(p_eval(params, parallel.shard_batch(batch, mesh)))
    real = index >= 0
    rows = index[real]
    assert not seen[rows].any(), "an example was evaluated twice"
    seen[rows] = True
    logits[rows] = out["logits"][real]
    kept[rows] = out["kept"][real]
    lengths[rows] = out["length"][real]
  assert seen.all(), "an example was not evaluated"
  bad = ~np.isfinite(logits).all(axis=-1)
  if bad.any():
    raise NonFiniteError(f"{where or 'Evaluation'}: {int(bad.sum())} of {n} examples get "
                         "non-finite logits, so no metric is reported.")
  preds = metrics_lib.predictions_from_logits(logits, info.num_labels)
  result = metrics_lib.glue_metrics(task, preds, data.labels[:n])
  result.update(flops_lib.summarize(lengths, kept, model_config, task))
  return result


# ----------------------------------------------------------------------- the stage


class _StopRequest:
  """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    # No logging here: the signal can land inside a log write, and logging from the
    # handler would re-enter that stream. The loop logs once it sees the flag.
    del frame
    self.signum = signum
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Interrupted(Exception):
  """Raised after a requested stop has been checkpointed."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class _FiniteGuard:
  """Stops training at the first non-finite loss or gradient norm.

  A step's values are checked once the next step is queued (so the device never
  waits for the host), and always before anything is logged, evaluated or saved:
  no checkpoint is ever written from a state after a bad step.
  """

  def __init__(self, stage: str, ckpts: checkpoints.StageCheckpoints):
    self.stage, self.ckpts = stage, ckpts
    self.pending = None  # (step, {'loss', 'grad_norm'} device arrays) not yet checked

  def check(self, params: Optional[Any] = None) -> None:
    """Raises NonFiniteError for the pending step's loss or gradient norm, or for
    `params` (checked before saving: a pruning gradient can poison them alone)."""
    if self.pending is None:
      return
    step, values = self.pending
    self.pending = None
    values = {k: float(v) for k, v in parallel.to_host(values).items()}
    if params is not None:
      finite = np.all(parallel.to_host(_all_finite(params)))
      values["parameters"] = 0.0 if finite else math.nan
    if all(math.isfinite(v) for v in values.values()):
      return
    last = self.ckpts.latest.latest_step()
    where = (f"the last good checkpoint, {self.ckpts.directory}/latest/{last}, is kept "
             "and a rerun resumes from it" if last is not None else
             "this stage has no checkpoint yet")
    bad_params = " and non-finite parameters" if values.get("parameters", 0) else ""
    raise NonFiniteError(
        f"Stage {self.stage}, step {step}: loss {values['loss']}, gradient norm "
        f"{values['grad_norm']}{bad_params}. Training stopped and nothing was saved after the bad "
        f"step; {where}. Try a lower config.stage_settings.{self.stage}.learning_rate "
        "or check the data and config.data.max_length.")

  def add(self, step: int, train_metrics: dict) -> None:
    self.check()
    self.pending = (step, {k: train_metrics[k] for k in ("loss", "grad_norm")})


# The eval_data key of the held-out training slice that picks checkpoints.
SELECTION = selection.SPLIT


@dataclasses.dataclass
class RunContext:
  """What every stage of a run shares."""
  config: ml_collections.ConfigDict
  workdir: str
  model: encoder_lib.EncoderModel
  tokenizer: tokenization.Tokenizer
  method: pruning_base.Method
  train_data: batching.Encoded
  eval_data: dict[str, batching.Encoded]
  mesh: Any

  @property
  def selection_split(self) -> str:
    """The split that picks checkpoints: the held-out training slice, if the run has
    one (`config.data.selection_fraction`), else the task's first dev split."""
    if SELECTION in self.eval_data:
      return SELECTION
    return glue.TASKS[self.config.task].eval_splits[0]



def flops_budget(settings: ml_collections.ConfigDict, start_flops: float,
                 slack: float) -> Optional[float]:
  """The most relative FLOPs a stage's 'best' checkpoint may have, or None (no bound).

  `settings.flops_budget`: '' (no bound), 'start' (the FLOPs the stage started from,
  plus `slack`) or a number (a target).
  """
  budget = settings.flops_budget
  if not budget:
    return None
  if budget == "start":
    return start_flops + slack
  try:
    return float(budget)
  except ValueError:
    raise ValueError(f"flops_budget {budget!r} is not '', 'start' or a number.") from None


selection_score = selection.selection_score


def run_stage(ctx: RunContext, stage: str, init_params: dict,
              teacher: Optional[dict] = None,
              start_flops: float = 1.0) -> tuple[dict, dict]:
  """Trains one stage (resuming if possible).

  Args:
    ctx: the run's shared context.
    stage: one of `pruning_base.STAGES`.
    init_params: {'model': ..., 'pruning': ...} the stage starts from.
    teacher: frozen model parameters for a method that distils, or None.
    start_flops: relative FLOPs of `init_params` (the previous stage's result) on the
      selection split, for the stage's FLOPs budget and drift.
  Returns:
    (the parameters handed to the next stage: best or last, per the stage's
    `handover` setting; the stage summary with their metrics on the selection split,
    which picked them, and on dev, evaluated only here, once).
  """
  config, mesh, model = ctx.config, ctx.mesh, ctx.model
  stage_dir = os.path.join(ctx.workdir, stage)
  os.makedirs(stage_dir, exist_ok=True)
  if jax.process_index() == 0:
    fingerprint.write(stage_dir, config, stage, int(mesh.devices.size))
  settings = config.stage_settings[stage]
  if settings.handover not in ("best", "last"):
    raise ValueError(f"handover {settings.handover!r} is not 'best' or 'last'.")
  task = config.task
  info = glue.TASKS[task]
  is_main = jax.process_index() == 0

  batch_size = parallel.global_batch_size(config.data.per_device_batch_size, mesh)
  lengths = ctx.train_data.lengths
  per_epoch = batching.steps_per_epoch(lengths, config.data.buckets, batch_size)
  total_steps = max(1, round(per_epoch * settings.num_epochs))
  if config.train.max_steps:
    total_steps = min(total_steps, config.train.max_steps)
  pruning_tx = (ctx.method.pruning_optimizer(settings, config.train, total_steps)
                if stage == "soft" else optax.set_to_zero())
  tx = make_optimizer(settings, config.train, total_steps, pruning_tx)
  state = TrainState(step=jnp.array(0, jnp.int32), params=init_params,
                     opt_state=tx.init(init_params))
  ckpts = checkpoints.StageCheckpoints(stage_dir)
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state = restored
    logging.info("Resuming stage %s at step %d.", stage, int(state.step))
  if is_main:  # rows after the resumed step are written again below
    run_log.drop_rows_after(stage_dir, -1 if restored is None else int(state.step))
  state = parallel.replicate(state, mesh)
  if teacher is not None:  # its own buffers: the state's are donated every step
    teacher = parallel.replicate(jax.tree.map(jnp.copy, teacher), mesh)

  p_train = parallel.data_parallel_train_step(
      functools.partial(train_step, model=model, tx=tx, method=ctx.method, stage=stage,
                        total_steps=total_steps),
      mesh)
  # The soft stage is judged by the hard decisions inference will make.
  eval_stage = "hard" if stage == "soft" else stage
  p_eval = parallel.data_parallel_eval_step(
      functools.partial(eval_step, model=model, method=ctx.method, stage=eval_stage), mesh)
  eval_fn = lambda params, split, step: evaluate(
      p_eval, params, ctx.eval_data[split], task, config, mesh, ctx.tokenizer.pad_token_id,
      model.config, where=f"Stage {stage}, step {step}, {split}")
  select_split = ctx.selection_split
  reporter = run_log.Reporter(stage_dir, enabled=is_main)
  base_rng = jax.random.PRNGKey(config.seed + 1)
  step = int(state.step)
  start_time = time.time()
  eval_every = settings.eval_every_steps or config.train.eval_every_steps or per_epoch
  budget = flops_budget(settings, start_flops, config.train.flops_slack)

  def evaluate_and_keep_best(step):
    result = eval_fn(state.params, select_split, step)
    result.update(ctx.method.metrics(parallel.to_host(state.params["pruning"])))
    reporter.write(step, f"eval_{select_split}", result)
    score = selection_score(result[info.metric], result["relative_flops"], budget)
    if ckpts.save_best(step, state, score):
      logging.info("New best %s %.4f at step %d (relative FLOPs %.4f).", info.metric,
                   result[info.metric], step, result["relative_flops"])

  if budget is not None and step == 0 and restored is None:
    evaluate_and_keep_best(0)  # the starting point is a candidate within the budget

  bar = tqdm.tqdm(total=total_steps, initial=step, desc=stage, unit="step",
                  disable=not (is_main and config.train.progress_bar), dynamic_ncols=True)
  guard = _FiniteGuard(stage, ckpts)
  try:
    with _StopRequest() as stop:
      while step < total_steps:
        epoch, offset = divmod(step, per_epoch)
        batches = batching.train_batches(ctx.train_data, config.data.buckets, batch_size,
                                         config.seed, epoch, ctx.tokenizer.pad_token_id,
                                         start=offset)
        for batch in batches:
          batch.pop("index")
          state, train_metrics = p_train(state, parallel.shard_batch(batch, mesh),
                                         base_rng, teacher)
          step += 1
          guard.add(step, train_metrics)
          bar.update(1)
          must_check = (step % config.train.log_every_steps == 0 or step % eval_every == 0
                        or step % config.train.checkpoint_every_steps == 0
                        or step >= total_steps)
          if must_check:
            guard.check(state.params)
          if step % config.train.log_every_steps == 0 or step == total_steps:
            values = parallel.to_host(train_metrics)
            bar.set_postfix(loss=f"{float(values['loss']):.4f}")
            reporter.write(step, "train", values)
          if step % eval_every == 0 or step == total_steps:
            evaluate_and_keep_best(step)
          if step % config.train.checkpoint_every_steps == 0 or step == total_steps:
            ckpts.save_latest(step, state)
          # Every process stops at the same step, so all of them save it (a collective).
          if parallel.any_process(stop.requested):
            logging.warning("Stop requested (%s): saving a checkpoint, then exiting.",
                            f"signal {stop.signum}" if stop.signum else "another process")
            guard.check(state.params)
            ckpts.save_latest(step, state)
            raise Interrupted(f"Stopped at step {step} of stage {stage}; rerun the same "
                              f"command to resume.")
          if step >= total_steps:
            break
  finally:
    bar.close()
    reporter.close()

  best = ckpts.restore_best(state) if settings.handover == "best" else None
  ckpts.close()
  handover = best.params if best is not None else state.params
  dev = {split: eval_fn(handover, split, step) for split in info.eval_splits}
  selected = (dev[select_split] if select_split in dev
              else eval_fn(handover, select_split, step))
  end_flops = selected["relative_flops"]
  if budget is not None and end_flops > budget:
    logging.warning("Stage %s: no checkpoint within the FLOPs budget %.4f; handing over "
                    "the one with the fewest FLOPs (%.4f).", stage, budget, end_flops)
  summary = {"stage": stage, "steps": total_steps, "epochs": settings.num_epochs,
             "handover": settings.handover, "flops_budget": budget,
             "selection_split": select_split, "selection": selected,
             "start_relative_flops": start_flops,
             "flops_drift": end_flops - start_flops,
             # time of this invocation only: a resumed stage counts from the resume
             "wall_time_s": time.time() - start_time, "dev": dev,
             "pruning": ctx.method.metrics(parallel.to_host(handover["pruning"]))}
  if is_main:
    run_log.write_json(os.path.join(stage_dir, "summary.json"), summary)
  return handover, summary


# ---------------------------------------------------------------------------- run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       overwrite: bool = False) -> dict:
  """Runs every stage of `config.stages` in `workdir`; writes summary.json.

  The config is checked first (`config_checks`), then against what the workdir's
  stages were made with (`fingerprint.check_workdir`; `overwrite` deletes differing
  stages instead of refusing); config.json is written only after both pass.
  """
  for stage in config.stages:
    if stage not in pruning_base.STAGES:
      raise ValueError(f"Unknown stage {stage!r}; expected one of {pruning_base.STAGES}.")
  config_checks.validate(config)
  if config.init_from and os.path.exists(os.path.join(config.init_from, "config.json")):
    with open(os.path.join(config.init_from, "config.json")) as f:
      selection.check_init_from(config, json.load(f), config.init_from)
  os.makedirs(workdir, exist_ok=True)
  parallel.maybe_initialize_distributed(config)
  config_checks.validate_devices(config, jax.device_count(), jax.process_count())
  start = time.time()
  info = glue.TASKS[config.task]
  mesh = parallel.make_mesh(config.num_devices)
  registry.complete_config(config)
  config.data.buckets = batching.normalize_buckets(config.data.buckets,
                                                   config.data.max_length)
  fingerprint.check_workdir(config, workdir, int(mesh.devices.size), overwrite)
  rng = jax.random.PRNGKey(config.seed)
  model, model_params, tokenizer = classifier.build(config, info.num_labels, rng)
  method = registry.get_method(config.pruning, model.config)
  train_data, held_out = batching.load_train(config, tokenizer)
  eval_data = {s: batching.load_split(config, tokenizer, s, config.data.max_eval_examples)
               for s in info.eval_splits}
  if held_out is not None:
    eval_data[SELECTION] = held_out
  logging.info("Task %s: %d train examples, devices %s, global batch %d.", config.task,
               len(train_data), mesh.devices.size,
               parallel.global_batch_size(config.data.per_device_batch_size, mesh))
  ctx = RunContext(config, workdir, model, tokenizer, method, train_data, eval_data, mesh)
  if jax.process_index() == 0:
    run_log.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  params = {"model": model_params,
            "pruning": method.init_params(jax.random.fold_in(rng, 1))}
  if config.init_from:
    params = _init_from(config.init_from, params)
  stages = {}
  teacher = None
  start_flops = 1.0
  for stage in config.stages:
    if method.needs_teacher and stage != "finetune" and teacher is None:
      teacher = params["model"]  # the fine-tuned (or init_from) unpruned model
    params, stages[stage] = run_stage(ctx, stage, params,
                                      teacher if stage != "finetune" else None,
                                      start_flops=start_flops)
    start_flops = stages[stage]["selection"]["relative_flops"]

  last = stages[config.stages[-1]]
  summary = {"task": config.task, "method": method.name,
             "dev": last["dev"], "stages": stages,
             "selection": {**selection.slice_record(
                 config, 0 if held_out is None else len(held_out), len(train_data)),
                           "metrics": last["selection"]},
             "wall_time_s": time.time() - start,
             "steps": sum(s["steps"] for s in stages.values()),
             "devices": int(mesh.devices.size),
             "global_batch": parallel.global_batch_size(config.data.per_device_batch_size,
                                                        mesh),
             "device_kind": jax.devices()[0].device_kind,
             "compute_dtype": model.config.compute_dtype,
             "config": config.to_dict()}
  if jax.process_index() == 0:
    run_log.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _init_from(workdir: str, params: dict) -> dict:
  """Model parameters from the best checkpoint of another run's finetune stage."""
  ckpts = checkpoints.StageCheckpoints(os.path.join(workdir, "finetune"), read_only=True)
  restored = ckpts.restore_best()
  ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"init_from={workdir!r} has no finetune/best checkpoint.")
  return {"model": checkpoints.cast_like(params["model"], restored["params"]["model"]),
          "pruning": params["pruning"]}
