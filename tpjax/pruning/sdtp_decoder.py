"""SDTP on a decoder's prefill (methods.md section 3; issue 11 part B).

At each pruning location (the hidden state entering layer l, for l in
`Schedule.layers`) a scorer rates the tokens still alive and the top-k by score stay, k
being `Schedule.keep[s]` of the prompt's n tokens. The first `keep_first` tokens and
the last `keep_last` fraction of the prompt are always kept (the question or the text
being continued sits at the end). Kept tokens stay in their original order with their
original position ids, so RoPE is unchanged for them.

Two ways to run the same decisions:

- `PrunedPrefill`: real removal. After each decision the kept tokens are gathered into
  the smallest multiple of `Schedule.step` slots that holds them (bucketed lengths, so
  compiled layers are reused), and later layers run on the shorter array. Each layer's
  keys and values hold only the tokens that reached it, so each layer's KV cache is its
  own size; decoding then continues at position n (`decoder.caches_from_layers`).
- `masked_prefill`: every layer at full length, pruned tokens removed from attention by
  the policy mask (decoder.attend's `k_keep`). Used for training and for tests: on the
  kept tokens it equals the compacted path. Its mask_fn is `hard_mask_fn` (any
  scorer's inference decision) or `predictor_mask_fn` (the predictors' decision, or
  its straight-through Gumbel top-k for training on the pruned model).

Every stage's selection is applied, whether or not its kept tokens fit fewer slots:
where the bucket does not shrink, the dropped tokens stay in the array as invalid slots
(never attended to). `PrefillResult.kept` counts tokens, `PrefillResult.slots` the
array lengths.

Selection interface, shared by every method: a scorer
`score_fn(score_params, stage, inputs: StageInputs) -> <float32>[batch, seq]`, higher =
keep; the pipeline then keeps the always-kept tokens and the best of the rest up to
the stage's kept count, so every method prunes the same number of tokens and the same
always-kept ones. Scorers:

- `predictor_scorer`: the trained SDTP predictors;
- `recency_scorer`: keep the most recent tokens (StreamingLLM sinks + local window);
- `random_scorer`: a seeded random pick per (stage, position), the floor;
- `attention_scorer(config, last)`: attention received from the last `last` live
  queries in the previous layer (the LazyLLM / H2O / SnapKV family);
- `oracle_scorer`: given per-token saliency (e.g. `prompt_saliency` of the prompt
  being evaluated), the bound a predictor could reach.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import decoder as decoder_lib
from tpjax.pruning import sdtp

ScoreFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Where to prune and how much of the prompt survives each stage (cumulative)."""
  layers: tuple[int, ...]
  keep: tuple[float, ...]
  keep_first: int = 4
  keep_last: float = 0.1
  step: int = 64  # compaction bucket: kept tokens are padded to a multiple of this

  def __post_init__(self):
    if len(self.layers) != len(self.keep):
      raise ValueError(f"{len(self.layers)} pruning layers but {len(self.keep)} keep "
                       "ratios; give one ratio per layer.")
    if list(self.layers) != sorted(set(self.layers)) or (self.layers and self.layers[0] < 1):
      raise ValueError(f"Pruning layers must be increasing and >= 1, got {self.layers}.")
    if any(not 0 < r <= 1 for r in self.keep) or list(self.keep) != sorted(self.keep)[::-1]:
      raise ValueError(f"Keep ratios must be in (0, 1] and non-increasing, got {self.keep}.")
    if not 0 < self.keep_last <= 1:
      raise ValueError(f"keep_last={self.keep_last} must be in (0, 1]: the last prompt "
                       "token predicts the first generated token and must never be pruned.")
    if self.keep_first < 0:
      raise ValueError(f"keep_first={self.keep_first} must be >= 0.")


def default_schedule(num_layers: int, start: int = 4, every: int = 3, ratio: float = 0.9,
                     **kwargs) -> Schedule:
  """The paper's default scaled to `num_layers`: stages at start, start+every, ...,
  stage s keeping ratio^(s+1) of the prompt (geometric)."""
  layers = tuple(range(start, num_layers, every))
  return Schedule(layers, sdtp.geometric_ratios(len(layers), ratio), **kwargs)


def always_kept(positions: jax.Array, n: jax.Array, keep_first: int,
                keep_last: float) -> jax.Array:
  """<bool>[batch, seq]: the first `keep_first` and the last ceil(keep_last n) prompt
  positions. positions: <int32>[batch, seq] original ids; n: <int32>[batch]."""
  last = jnp.ceil(keep_last * n.astype(jnp.float32)).astype(jnp.int32)
  return (positions < keep_first) | (positions >= (n - last)[:, None])


def kept_count(n, keep: float, keep_first: int, keep_last: float) -> jax.Array:
  """Tokens left after a stage with ratio `keep`: ceil(keep n) (sdtp.keep_count), never
  fewer than the always-kept ones. n: <int>[batch] -> <int32>[batch]."""
  n = jnp.asarray(n, jnp.int32)
  always = jnp.minimum(n, keep_first + jnp.ceil(keep_last * n).astype(jnp.int32))
  return jnp.minimum(n, jnp.maximum(sdtp.keep_count(n, keep), always))


def keep_mask(scores: jax.Array, live: jax.Array, always: jax.Array,
              k: jax.Array) -> jax.Array:
  """<bool>[batch, seq]: the k best live tokens, always-kept ones first
  (sdtp.top_k_keep; shapes there)."""
  return sdtp.top_k_keep(scores, live, always, k) > 0.5


def gather_kept(mask: jax.Array, slots: int, *arrays: jax.Array):
  """Kept tokens moved to the front in their original order, cut to `slots`.

  Args:
    mask: <bool>[batch, seq].
    slots: output length, >= every row's kept count.
    arrays: each [batch, seq, ...].
  Returns:
    (<bool>[batch, slots] validity, then each array as [batch, slots, ...]).
  """
  order = jnp.argsort(~mask, axis=-1, stable=True)[:, :slots]
  take = lambda x: jnp.take_along_axis(
      x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
  return (take(mask),) + tuple(take(x) for x in arrays)


def bucket(count: int, step: int) -> int:
  return max(step, -(-count // step) * step)


@flax.struct.dataclass
class StageInputs:
  """What a scorer sees at a pruning stage (the layer l = Schedule.layers[stage]).

  hidden: <float32>[batch, seq, hidden], the hidden state entering layer l.
  positions: <int32>[batch, seq] original position ids of the slots.
  live: <bool>[batch, seq] tokens still present (not padding, not pruned earlier).
  n: <int32>[batch] prompt lengths.
  prev_hidden: <float32>[batch, seq, hidden], the hidden state entering layer l - 1
    (same slots: a selection only happens right before a layer runs).
  prev_layer: layer l - 1's parameters (decoder.layer_params).
  """
  hidden: jax.Array
  positions: jax.Array
  live: jax.Array
  n: jax.Array
  prev_hidden: jax.Array
  prev_layer: dict


def select_mask(schedule: Schedule, score_fn: ScoreFn, score_params, stage: int,
                inputs: StageInputs) -> jax.Array:
  """<bool>[batch, seq]: a stage's decision, the always-kept tokens and the best-scored
  others up to `kept_count` (the same counts and always-kept tokens for every scorer)."""
  scores = score_fn(score_params, stage, inputs)
  always = always_kept(inputs.positions, inputs.n, schedule.keep_first, schedule.keep_last)
  k = kept_count(inputs.n, schedule.keep[stage], schedule.keep_first, schedule.keep_last)
  return keep_mask(scores, inputs.live, always, k)


def recency_scorer(score_params, stage, inputs: StageInputs) -> jax.Array:
  """Training-free baseline: keep the most recent tokens (with the always-kept first
  ones: StreamingLLM's sinks + local window)."""
  del score_params, stage
  return inputs.positions.astype(jnp.float32)


def random_scorer(score_params, stage, inputs: StageInputs) -> jax.Array:
  """Training-free floor: a uniform random score per (stage, original position).

  score_params is a PRNG key (jax.random.PRNGKey(seed)). The score depends on the key,
  the stage and the position only, so a prompt's pick does not depend on its batch,
  its padding or on the compacted layout.
  """
  key = jax.random.fold_in(score_params, stage)
  flat = inputs.positions.reshape(-1)
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(flat)
  return jax.vmap(lambda k: jax.random.uniform(k))(keys).reshape(inputs.positions.shape)


def attention_received(config: decoder_lib.DecoderConfig, layer: dict, hidden: jax.Array,
                       positions: jax.Array, live: jax.Array, last: int) -> jax.Array:
  """Attention each key receives from the last `last` live queries of one layer.

  Causal softmax over live keys as in the layer's own attention (binary keep masks
  equal attention over the kept keys), averaged over query heads and those queries.

  Args:
    config: the decoder's config.
    layer: the layer's parameters (decoder.layer_params).
    hidden: <float32>[batch, seq, hidden] entering the layer.
    positions: <int32>[batch, seq]; live: <bool>[batch, seq].
    last: number of queries (the live tokens with the largest positions).
  Returns:
    <float32>[batch, seq]; 0 for keys that are not live.
  """
  x = decoder_lib.RMSNorm(config.rms_norm_eps).apply(
      {"params": layer["input_layernorm"]}, hidden)
  q, k, _ = decoder_lib.SelfAttention(config).apply(
      {"params": layer["self_attn"]}, x, positions, method="_qkv")
  last = min(last, hidden.shape[1])
  _, rows = jax.lax.top_k(jnp.where(live, positions, -1), last)   # [batch, last]
  q = jnp.take_along_axis(q, rows[:, :, None, None, None], axis=1)
  q_pos = jnp.take_along_axis(positions, rows, axis=1)
  q_live = jnp.take_along_axis(live, rows, axis=1)
  # [batch, kv_heads, groups, last, seq]
  logits = jnp.einsum("bqhgd,bhkd->bhgqk", q, k,
                      preferred_element_type=jnp.float32) * config.head_dim ** -0.5
  visible = live[:, None, :] & (positions[:, None, :] <= q_pos[:, :, None])
  logits = jnp.where(visible[:, None, None], logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(q_live[:, None, None, :, None], probs, 0.0)
  count = jnp.maximum(jnp.sum(q_live, axis=1), 1) * config.num_attention_heads
  received = jnp.sum(probs, axis=(1, 2, 3)) / count[:, None]
  return jnp.where(live, received, 0.0)


def attention_scorer(config: decoder_lib.DecoderConfig, last: int = 32) -> ScoreFn:
  """Training-free baseline of the LazyLLM / H2O / SnapKV family: a token's score at
  the stage before layer l is the attention it received in layer l - 1 from the last
  `last` live queries (the end of the prompt, always kept). score_params unused."""
  def score_fn(score_params, stage, inputs: StageInputs) -> jax.Array:
    del score_params, stage
    return attention_received(config, inputs.prev_layer, inputs.prev_hidden,
                              inputs.positions, inputs.live, last)
  return score_fn


def oracle_scorer(score_params, stage, inputs: StageInputs) -> jax.Array:
  """Scores given per token: score_params is <float32>[stages, batch, n_max], stage s's
  score of each row's token at original position p (e.g. `prompt_saliency`)."""
  table = score_params[stage]
  index = jnp.clip(inputs.positions, 0, table.shape[1] - 1)
  return jnp.take_along_axis(table, index, axis=1)


def predictor_logits(stage_params, hidden: jax.Array) -> jax.Array:
  """sdtp.Predictor: <float32>[batch, seq, hidden] -> [batch, seq, 2] (drop, keep)."""
  return sdtp.Predictor().apply({"params": stage_params}, hidden)


def predictor_scorer(score_params, stage, inputs: StageInputs) -> jax.Array:
  """SDTP: the stage's trained predictor, keep minus drop logit (sdtp.keep_score).
  score_params is the list of per-stage Predictor parameters."""
  return sdtp.keep_score(predictor_logits(score_params[stage], inputs.hidden))


def init_predictors(config: decoder_lib.DecoderConfig, schedule: Schedule,
                    rng: jax.Array) -> list:
  """Fresh Predictor parameters, one per pruning stage."""
  dummy = jnp.zeros((1, 1, config.hidden_size))
  return [sdtp.Predictor().init(key, dummy)["params"]
          for key in jax.random.split(rng, len(schedule.layers))]


@functools.lru_cache(maxsize=None)
def _model_functions(config: decoder_lib.DecoderConfig) -> tuple:
  """Jitted (embed, layer_forward, layer_decode, head) of the decoder with `config`,
  shared by every PrunedPrefill of that model, so systems compared on the same
  prompts compile each shape once, not once per system."""
  model = decoder_lib.DecoderModel(config)
  embed = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=model.embed))
  layer = jax.jit(functools.partial(decoder_lib.layer_forward, config))
  # Decoding also runs layer by layer: layers whose caches have the same size share
  # one compiled step, where a whole-model step would compile per cache-size tuple.
  layer_decode = jax.jit(functools.partial(decoder_lib.layer_decode, config),
                         donate_argnames=("cache",))
  head = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.head))
  return embed, layer, layer_decode, head


@dataclasses.dataclass
class PrefillResult:
  """A (pruned) prefill: next-token logits and each layer's surviving tokens."""
  logits: jax.Array              # <float32>[batch, vocab] at the last prompt token
  kv: tuple                      # per layer (keys, values) [batch, kv_heads, n_l, head_dim]
  positions: tuple               # per layer <int32>[batch, n_l]
  valid: tuple                   # per layer <bool>[batch, n_l]
  next_position: jax.Array       # <int32>[batch] = n, where decoding continues
  slots: np.ndarray              # <int>[layers] array length entering each layer

  @property
  def kept_per_row(self) -> np.ndarray:
    """<int>[batch, layers]: tokens (valid slots) entering each layer."""
    return np.stack([np.asarray(v).sum(1) for v in self.valid], axis=1)

  @property
  def kept(self) -> np.ndarray:
    """<int>[layers]: the most tokens any row has entering each layer."""
    return self.kept_per_row.max(0)


class PrunedPrefill:
  """Compacting prefill with SDTP (or baseline) decisions, and decoding after it.

  Args:
    model: the DecoderModel.
    params: its parameters.
    schedule: a Schedule, or None for the unpruned path through the same code.
    score_fn: a scorer (see module doc); unused without a schedule.
    score_params: the scorer's parameters.
  """

  def __init__(self, model: decoder_lib.DecoderModel, params, schedule: Optional[Schedule],
               score_fn: Optional[ScoreFn] = None, score_params=None):
    if schedule is not None and schedule.layers and score_fn is None:
      raise ValueError("A pruning schedule needs a score_fn.")
    if schedule is not None and schedule.layers and (
        schedule.layers[-1] >= model.config.num_hidden_layers):
      raise ValueError(f"Pruning layer {schedule.layers[-1]} does not exist in a "
                       f"{model.config.num_hidden_layers}-layer model.")
    self.model, self.params = model, params
    self.schedule, self.score_fn, self.score_params = schedule, score_fn, score_params
    self._embed, self._layer, self._layer_decode, self._head = _model_functions(
        model.config)
    self._select = jax.jit(self._select_impl, static_argnames=("stage", "slots"))
    self._last_logits = jax.jit(self._last_logits_impl)

  def _decode(self, params, ids, positions, caches):
    """DecoderModel.decode, one compiled layer at a time; same inputs and outputs."""
    x = self._embed(params, ids)
    new = []
    for l, cache in enumerate(caches):
      x, cache = self._layer_decode(decoder_lib.layer_params(params, l), x, positions,
                                    cache)
      new.append(cache)
    return self._head(params, x), tuple(new)

  def _select_impl(self, score_params, inputs: StageInputs, stage, slots):
    mask = select_mask(self.schedule, self.score_fn, score_params, stage, inputs)
    return gather_kept(mask, slots, inputs.hidden, inputs.positions)

  def _last_logits_impl(self, params, hidden, positions, valid):
    last = jnp.argmax(jnp.where(valid, positions, -1), axis=1)
    x = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return self.model.apply({"params": params}, x, method=self.model.head)

  def slots(self, n: np.ndarray) -> list[int]:
    """Slots after each stage for prompt lengths n (<int>[batch]), bucketed."""
    sch = self.schedule
    return [bucket(int(kept_count(n, r, sch.keep_first, sch.keep_last).max()), sch.step)
            for r in sch.keep]

  def prefill(self, ids: np.ndarray, valid: np.ndarray,
              size_slots_for: Optional[int] = None) -> PrefillResult:
    """Prefill of right- or left-padded prompts.

    Args:
      ids: <int32>[batch, seq].
      valid: <bool>[batch, seq].
      size_slots_for: size the compacted arrays for prompts of this many tokens
        instead of the actual ones (>= them), so prompts of different lengths padded
        to one length also share every later shape (fewer compilations).
    Returns:
      PrefillResult.
    """
    valid = np.asarray(valid, bool)
    n = valid.sum(1).astype(np.int32)
    if size_slots_for is not None and size_slots_for < n.max():
      raise ValueError(f"size_slots_for={size_slots_for} is below the longest prompt "
                       f"({n.max()} tokens).")
    positions = decoder_lib.positions_from_mask(jnp.asarray(valid))
    stages = {}
    if self.schedule is not None:
      sizing = n if size_slots_for is None else np.array([size_slots_for])
      stages = {l: (s, slots) for s, (l, slots) in
                enumerate(zip(self.schedule.layers, self.slots(sizing)))}
    x = self._embed(self.params, jnp.asarray(ids))
    live = jnp.asarray(valid)
    kv, layer_pos, layer_valid, slot_counts = [], [], [], []
    prev = x
    for l in range(self.model.config.num_hidden_layers):
      if l in stages:
        stage, slots = stages[l]
        # Applied even where the bucket does not shrink: dropped tokens then stay as
        # invalid slots, so every stage prunes what its schedule says.
        inputs = StageInputs(x, positions, live, jnp.asarray(n), prev,
                             decoder_lib.layer_params(self.params, l - 1))
        live, x, positions = self._select(self.score_params, inputs, stage=stage,
                                          slots=min(slots, x.shape[1]))
      slot_counts.append(x.shape[1])
      prev = x
      x, layer_kv = self._layer(decoder_lib.layer_params(self.params, l), x, positions,
                                live)
      kv.append(layer_kv)
      layer_pos.append(positions)
      layer_valid.append(live)
    logits = self._last_logits(self.params, x, positions, live)
    return PrefillResult(logits, tuple(kv), tuple(layer_pos), tuple(layer_valid),
                         jnp.asarray(n), np.asarray(slot_counts))

  def caches(self, result: PrefillResult, extra: int):
    return decoder_lib.caches_from_layers(result.kv, result.positions, result.valid, extra)

  def continuation_logits(self, result: PrefillResult, tokens: np.ndarray) -> jax.Array:
    """Teacher-forced next-token logits over a continuation of the prompt.

    Args:
      result: the prompt's prefill.
      tokens: <int32>[batch, T], the T tokens that follow the prompt.
    Returns:
      <float32>[batch, T, vocab]: row t predicts tokens[:, t] from the (pruned) prompt
      and tokens[:, :t]; row 0 is the prefill's own logits.
    """
    tokens = jnp.asarray(tokens)
    steps = tokens.shape[1]
    if steps == 1:
      return result.logits[:, None]
    caches = self.caches(result, steps)
    positions = result.next_position[:, None] + jnp.arange(steps - 1)[None]
    logits, _ = self._decode(self.params, tokens[:, :-1], positions, caches)
    return jnp.concatenate([result.logits[:, None], logits], axis=1)

  def continuation_nll(self, result: PrefillResult, tokens: np.ndarray) -> np.ndarray:
    """Per-token loss of the true continuation after the prompt.

    Args:
      result: the prompt's prefill.
      tokens: <int32>[batch, T], the T true next tokens.
    Returns:
      <float32>[batch, T]: token t's negative log-likelihood given the (pruned) prompt
      and the true tokens before it.
    """
    logp = jax.nn.log_softmax(self.continuation_logits(result, tokens), axis=-1)
    return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(tokens)[..., None],
                                           axis=-1)[..., 0])

  def greedy(self, result: PrefillResult, steps: int,
             eos: Optional[int] = None) -> np.ndarray:
    """<int32>[batch, steps] greedy tokens after the prompt (stops early once every row
    has produced `eos`; the rest is filled with eos)."""
    caches = self.caches(result, steps)
    token = jnp.argmax(result.logits, axis=-1).astype(jnp.int32)
    out = [np.asarray(token)]
    for t in range(1, steps):
      if eos is not None and all(np.any(np.stack(out, 1) == eos, axis=1)):
        out.append(np.full_like(out[0], eos))
        continue
      position = (result.next_position + t - 1)[:, None]
      logits, caches = self._decode(self.params, token[:, None], position, caches)
      token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
      out.append(np.asarray(token))
    return np.stack(out, axis=1)


def masked_prefill(config: decoder_lib.DecoderConfig, params, input_ids: jax.Array,
                   positions: jax.Array, valid: jax.Array, schedule: Schedule,
                   mask_fn: Optional[Callable[..., jax.Array]], remat: bool = False):
  """Prefill at full length with pruning simulated by the policy mask.

  `mask_fn(stage, inputs: StageInputs) -> <float32>[batch, seq]` gives the stage's
  keep decision (binary top-k for inference checks, straight-through Gumbel for
  training); it is multiplied into the running mask, and every layer from that stage
  on attends with the running mask (decoder.attend's `k_keep`).

  Args:
    input_ids, positions: <int32>[batch, seq]; valid: <bool>[batch, seq].
    mask_fn: see above; unused (may be None) for a schedule without layers.
    remat: recompute each layer in the backward pass instead of storing its attention
      weights (training through the masks at 1024 tokens would hold GBs of them).
  Returns:
    (last layer's output <float32>[batch, seq, hidden], per-stage running masks
    <float32>[stages, batch, seq], per-layer (keys, values)).
  """
  model = decoder_lib.DecoderModel(config)
  x = model.apply({"params": params}, input_ids, method=model.embed)
  running, masks, kv = None, [], []
  n = jnp.sum(valid, axis=1).astype(jnp.int32)
  prev = x
  stages = {l: s for s, l in enumerate(schedule.layers)}
  layer_forward = functools.partial(decoder_lib.layer_forward, config)
  if remat:
    layer_forward = jax.checkpoint(layer_forward)
  for l in range(config.num_hidden_layers):
    if l in stages:
      live = valid if running is None else valid & (running > 0.5)
      inputs = StageInputs(x, positions, live, n, prev,
                           decoder_lib.layer_params(params, l - 1))
      m = mask_fn(stages[l], inputs)
      running = m if running is None else running * m
      masks.append(running)
    prev = x
    x, layer_kv = layer_forward(decoder_lib.layer_params(params, l), x, positions, valid,
                                running)
    kv.append(layer_kv)
  return x, jnp.stack(masks) if masks else None, tuple(kv)


def hard_mask_fn(schedule: Schedule, score_fn: ScoreFn, score_params,
                 n: jax.Array) -> Callable[..., jax.Array]:
  """The inference decision of `PrunedPrefill` as a `masked_prefill` mask_fn; n is
  <int32>[batch], the prompt lengths (not the masked sequence's, which may be longer)."""
  def mask_fn(stage, inputs: StageInputs):
    inputs = inputs.replace(n=n)
    return select_mask(schedule, score_fn, score_params, stage, inputs).astype(jnp.float32)
  return mask_fn


def predictor_mask_fn(schedule: Schedule, score_params, n: jax.Array,
                      rng: Optional[jax.Array] = None, tau: float = 1.0,
                      logits_out: Optional[list] = None) -> Callable[..., jax.Array]:
  """The SDTP predictors' decision as a `masked_prefill` mask_fn (the 'pruned' recipe).

  With `rng` None, the inference decision (`select_mask` on the keep score, as
  `hard_mask_fn` with `predictor_scorer`). With an `rng`, stage s's straight-through
  Gumbel top-k (`sdtp.gumbel_top_k_keep`, key fold_in(rng, s), temperature `tau`):
  binary forward with exactly `kept_count` tokens, the always-kept ones among them;
  only live tokens can be kept, so a token dropped at a stage stays dropped.

  Args:
    schedule: the Schedule.
    score_params: per-stage Predictor parameters.
    n: <int32>[batch] prompt lengths.
    rng: PRNG key, or None.
    tau: Gumbel temperature.
    logits_out: a list each stage's predictor logits <float32>[batch, seq, 2] are
      appended to, in stage order (for losses on them), or None.
  """
  def mask_fn(stage, inputs: StageInputs):
    logits = predictor_logits(score_params[stage], inputs.hidden)
    if logits_out is not None:
      logits_out.append(logits)
    inputs = inputs.replace(n=n)
    if rng is None:
      score_fn = lambda *_: sdtp.keep_score(logits)
      return select_mask(schedule, score_fn, None, stage, inputs).astype(jnp.float32)
    always = always_kept(inputs.positions, n, schedule.keep_first, schedule.keep_last)
    k = kept_count(n, schedule.keep[stage], schedule.keep_first, schedule.keep_last)
    return sdtp.gumbel_top_k_keep(sdtp.keep_score(logits), jax.random.fold_in(rng, stage),
                                  inputs.live, always, k, tau)
  return mask_fn


def tail_loss(model: decoder_lib.DecoderModel, params, x: jax.Array, input_ids: jax.Array,
              weights: jax.Array) -> jax.Array:
  """T from the last layer's output x <float32>[batch, seq, hidden]: the weighted
  next-token loss summed over the batch, sum_b sum_t w_bt NLL_bt / sum_t w_bt (NLL_bt
  the loss of token t + 1 given tokens <= t; weights <float32>[batch, seq - 1])."""
  logits = model.apply({"params": params}, x[:, :-1], method=model.head)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                             input_ids[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.sum(nll * weights, axis=1) / jnp.sum(weights, axis=1))


def probe_target_fn(config: decoder_lib.DecoderConfig, params, input_ids: jax.Array,
                    layers: Sequence[int], loss_weights: jax.Array):
  """`target_fn(probes) -> (T, hiddens)` of the frozen, unpruned decoder, for
  sdtp.saliency_targets.

  probes, one <float32>[batch, seq, hidden] per pruning layer, are added to the hidden
  state entering that layer (zero probes leave the model unchanged, and d T / d probe
  is d T / d hidden); hiddens are those hidden states. T is the weighted next-token
  loss, summed over the batch: sum_b sum_t w_bt NLL_bt / sum_t w_bt, NLL_bt the loss of
  token t+1 given tokens <= t.

  Args:
    input_ids: <int32>[batch, seq], unpadded windows.
    layers: pruning layers.
    loss_weights: <float32>[batch, seq - 1] which predictions T counts.
  """
  model = decoder_lib.DecoderModel(config)
  layer_forward = functools.partial(decoder_lib.layer_forward, config)
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  valid = jnp.ones(input_ids.shape, bool)
  where = {l: i for i, l in enumerate(layers)}

  def target_fn(probes):
    x = model.apply({"params": params}, input_ids, method=model.embed)
    hiddens = []
    for l in range(config.num_hidden_layers):
      if l in where:
        x = x + probes[where[l]]
        hiddens.append(x)
      x, _ = layer_forward(decoder_lib.layer_params(params, l), x, positions, valid)
    return tail_loss(model, params, x, input_ids, loss_weights), tuple(hiddens)
  return target_fn


# What a token's saliency measures (`layerwise_saliency_fn`'s `target`):
# - "hidden": gradient x input of the hidden state entering the stage's layer (the
#   paper's; `prompt_saliency`);
# - "mask": the loss increase when the token is dropped from attention at the stage's
#   layer and every later one, to first order: minus the gradient of T with respect to
#   the policy mask (decoder.attend's k_keep) at M = 1, summed over those layers;
#   negative estimates (dropping helps) are clipped to 0.
SALIENCY_TARGETS = ("hidden", "mask")


def saliency_target(config) -> str:
  """A run config's (ConfigDict or its saved dict) saliency target; runs recorded
  before the field existed used "hidden"."""
  return config.get("saliency", {}).get("target", "hidden")


def _check_target(target: str) -> None:
  if target not in SALIENCY_TARGETS:
    raise ValueError(f"saliency target {target!r} is not one of {SALIENCY_TARGETS}.")


def layerwise_saliency_fn(config: decoder_lib.DecoderConfig, schedule: Schedule,
                          target_last: float, norm: str = "seq_max",
                          target: str = "hidden") -> Callable:
  """`fn(params, input_ids) -> <float32>[stages, batch, n]`: per-token saliency of T
  (`target_weights`' next-token loss), one layer's activations in memory at a time.

  With target "hidden" these are `prompt_saliency`'s targets; "mask" measures what
  pruning does instead (`SALIENCY_TARGETS`). Both are normalised with `norm` over the
  prunable tokens (always-kept ones get 0).

  The backward pass runs layer by layer from each layer's stored input, every layer's
  vector-Jacobian product its own compiled call. One compiled forward and backward of
  all 30 layers asks XLA for about 26 GB at 4096 tokens, with or without
  `jax.checkpoint` (every layer's attention weights live at once); here the peak is one
  layer's. The gradient at a layer's input is the gradient at the probe added there.
  """
  _check_target(target)
  model = decoder_lib.DecoderModel(config)
  where = {l: i for i, l in enumerate(schedule.layers)}

  # keep: None ("hidden": the unmasked layer) or <float32>[batch, n] ones ("mask").
  def layer(lp, x, positions, valid, keep):
    return decoder_lib.layer_forward(config, lp, x, positions, valid, keep)[0]

  embed = jax.jit(lambda params, ids: model.apply({"params": params}, ids,
                                                   method=model.embed))
  forward = jax.jit(layer)
  # (d T / d x, d T / d keep) of one layer
  backward = jax.jit(lambda lp, x, positions, valid, keep, g: jax.vjp(
      lambda x, keep: layer(lp, x, positions, valid, keep), x, keep)[1](g))
  head_grad = jax.jit(jax.grad(functools.partial(tail_loss, model), argnums=1))

  def fn(params, input_ids: jax.Array) -> jax.Array:
    batch, n = input_ids.shape
    weights = jnp.broadcast_to(jnp.asarray(target_weights(n, schedule, target_last)),
                               (batch, n - 1))
    positions = jnp.broadcast_to(jnp.arange(n), (batch, n))
    valid = jnp.ones((batch, n), bool)
    keep = jnp.ones((batch, n), jnp.float32) if target == "mask" else None
    prunable = ~always_kept(positions, jnp.full((batch,), n), schedule.keep_first,
                            schedule.keep_last)
    inputs, x = [], embed(params, input_ids)
    for l in range(config.num_hidden_layers):
      inputs.append(x)
      x = forward(decoder_lib.layer_params(params, l), x, positions, valid, keep)
    g = head_grad(params, x, input_ids, weights)
    targets = [None] * len(where)
    keep_grad = jnp.zeros((batch, n), jnp.float32)  # summed over layers >= l
    for l in reversed(range(config.num_hidden_layers)):
      g, g_keep = backward(decoder_lib.layer_params(params, l), inputs[l], positions,
                           valid, keep, g)
      if target == "mask":
        keep_grad = keep_grad + g_keep
      if l in where:
        if target == "hidden":
          raw = jnp.sum(g * inputs[l], axis=-1)
        else:
          raw = jnp.maximum(-keep_grad, 0.0)
        targets[where[l]] = sdtp.normalize_saliency(raw, prunable, norm)
    return jnp.stack(targets)
  return fn


def target_weights(n: int, schedule: Schedule, target_last: float) -> np.ndarray:
  """<float32>[n - 1]: which next-token predictions the saliency target T counts.

  The predictions made at the last ceil(target_last n) positions of an n-token
  sequence (prediction t reads tokens <= t and scores token t + 1; the last position
  has no next token in the sequence). Those positions must all be always kept
  (inside `keep_last`), so T never includes the prediction a prunable token makes
  itself: a prunable token's saliency is its influence on other tokens, through
  attention, the only path a pruned token loses at inference.

  Raises:
    ValueError: if the region leaves the always-kept tail or holds no prediction.
  """
  region = int(np.ceil(target_last * n - 1e-6))
  with jax.ensure_compile_time_eval():  # concrete even when called under jit
    always = np.asarray(always_kept(jnp.arange(n)[None], jnp.array([n]),
                                    schedule.keep_first, schedule.keep_last))[0]
  if region < 2:
    raise ValueError(f"target_last={target_last} of {n} tokens covers {region} position(s); "
                     "it needs at least 2 (the last one has no next token).")
  if not always[n - region:].all():
    raise ValueError(f"target_last={target_last} reaches prunable tokens: the saliency "
                     f"target must sit inside the always-kept last {schedule.keep_last} "
                     "of the sequence, so that no token's own prediction counts.")
  weights = np.zeros(n - 1, np.float32)
  weights[n - region:] = 1.0
  return weights


def prompt_saliency(config: decoder_lib.DecoderConfig, params, input_ids: jax.Array,
                    schedule: Schedule, target_last: float, norm: str = "seq_max",
                    target: str = "hidden"):
  """True saliency of prompts at every stage, the training target (`oracle_scorer`).

  For T = the next-token loss of the predictions in the always-kept tail
  (`target_weights`) of the frozen, unpruned decoder, normalised over the prunable
  tokens only. `target` (`SALIENCY_TARGETS`): "hidden", gradient times input of the
  hidden state (sdtp.saliency_targets, the paper's); "mask", minus the gradient of T
  with respect to each stage's keep mask at M = 1 (`masked_prefill`: stage s's mask
  multiplies attention at every layer from its own on), clipped at 0.

  Args:
    input_ids: <int32>[batch, n], unpadded prompts of one length n.
    target_last: the tail fraction T counts (inside schedule.keep_last).
    norm: one of sdtp.SALIENCY_NORMS.
    target: one of SALIENCY_TARGETS.
  Returns:
    (<float32>[stages, batch, n] targets (0 at always-kept tokens), hidden states
    entering the pruning layers <float32>[stages, batch, n, hidden], T <float32>[]).
  """
  _check_target(target)
  batch, n = input_ids.shape
  weights = jnp.broadcast_to(jnp.asarray(target_weights(n, schedule, target_last)),
                             (batch, n - 1))
  positions = jnp.broadcast_to(jnp.arange(n), (batch, n))
  prunable = ~always_kept(positions, jnp.full((batch,), n), schedule.keep_first,
                          schedule.keep_last)
  stages = len(schedule.layers)
  target_fn = probe_target_fn(config, params, input_ids, schedule.layers, weights)
  shapes = [(batch, n, config.hidden_size)] * stages
  _, hiddens = target_fn(tuple(jnp.zeros(sh) for sh in shapes))
  if target == "hidden":
    targets, value = sdtp.saliency_targets(target_fn, shapes, norm, [prunable] * stages)
    return jnp.stack(targets), jnp.stack(hiddens), value
  model = decoder_lib.DecoderModel(config)

  def loss(masks):  # T of the masked model, masks <float32>[stages, batch, n]
    x, _, _ = masked_prefill(config, params, input_ids, positions,
                             jnp.ones((batch, n), bool), schedule,
                             lambda stage, _: masks[stage])
    return tail_loss(model, params, x, input_ids, weights)

  value, grads = jax.value_and_grad(loss)(jnp.ones((stages, batch, n), jnp.float32))
  targets = [sdtp.normalize_saliency(jnp.maximum(-g, 0.0), prunable, norm) for g in grads]
  return jnp.stack(targets), jnp.stack(hiddens), value


def prefill_macs(config: decoder_lib.DecoderConfig, kept: Sequence[float]) -> float:
  """Multiply-accumulates of a causal prefill with kept[l] tokens entering layer l
  (projections, causal attention n(n+1)/2 per head, SwiGLU; the head on one token)."""
  d, hd = config.hidden_size, config.head_dim
  q_out = config.num_attention_heads * hd
  kv_out = config.num_key_value_heads * hd
  total = 0.0
  for n in kept:
    total += n * (d * q_out + 2 * d * kv_out + q_out * d)        # q, k, v, o
    total += 2 * config.num_attention_heads * hd * n * (n + 1) / 2  # scores, values
    total += n * 3 * d * config.intermediate_size                  # gate, up, down
  return total + d * config.vocab_size


def kv_cache_bytes(result: PrefillResult) -> int:
  """Bytes of keys and values a prefill leaves in the caches (valid slots only)."""
  total = 0
  for (k, _), m in zip(result.kv, result.valid):
    per_token = 2 * k.shape[1] * k.shape[3] * k.dtype.itemsize
    total += int(np.asarray(m).sum()) * per_token
  return total


def keep_fraction(config: decoder_lib.DecoderConfig, schedule: Schedule, n: int) -> dict:
  """How much of an n-token prompt survives: at the last stage, and averaged over
  layers (token-layers), for run_log."""
  counts = [n] * config.num_hidden_layers
  for l, r in zip(schedule.layers, schedule.keep):
    k = int(kept_count(np.array([n]), r, schedule.keep_first, schedule.keep_last)[0])
    counts[l:] = [k] * (config.num_hidden_layers - l)
  return {"final_kept": counts[-1] / n, "token_layers_kept": sum(counts) / (n * len(counts)),
          "relative_macs": prefill_macs(config, counts) / prefill_macs(
              config, [n] * config.num_hidden_layers)}



def save_predictors(workdir: str, score_params: list, schedule: Schedule,
                    extra: Optional[dict] = None) -> None:
  """Writes `predictors.msgpack` and `sdtp.json` (the schedule and `extra`) to workdir."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "predictors.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(score_params))
  with open(os.path.join(workdir, "sdtp.json"), "w", encoding="utf-8") as f:
    json.dump({"schedule": dataclasses.asdict(schedule), **(extra or {})}, f, indent=1)


def load_predictors(workdir: str, config: decoder_lib.DecoderConfig,
                    ratio: Optional[float] = None) -> tuple[list, Schedule, dict]:
  """(per-stage Predictor parameters, Schedule, the saved extras) from a workdir; the
  extras gain "sha256", the SHA-256 of predictors.msgpack (what results cite).

  `ratio` replaces the saved keep ratios by ratio^(s+1) at the same layers. Modules
  trained by teacher forcing (the unpruned model's hidden states) serve every ratio;
  those of the 'pruned' recipe (`meta["config"]["train"]["recipe"]`) saw the hidden
  states of the saved schedule's pruning, so another ratio runs them off that
  distribution.
  """
  meta_path = os.path.join(workdir, "sdtp.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"No trained SDTP predictors in {workdir!r} (expected "
                            "sdtp.json and predictors.msgpack); train them with "
                            "`python -m tpjax.training.sdtp_decoder`.")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  sch = meta.pop("schedule")
  keep = (tuple(sch["keep"]) if ratio is None
          else sdtp.geometric_ratios(len(sch["layers"]), ratio))
  schedule = Schedule(**{**sch, "layers": tuple(sch["layers"]), "keep": keep})
  template = init_predictors(config, schedule, jax.random.PRNGKey(0))
  with open(os.path.join(workdir, "predictors.msgpack"), "rb") as f:
    data = f.read()
  meta["sha256"] = hashlib.sha256(data).hexdigest()
  return list(flax.serialization.from_bytes(template, data)), schedule, meta
