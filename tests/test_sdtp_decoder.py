"""SDTP on the decoder's prefill (tpjax/pruning/sdtp_decoder.py) on a tiny random decoder.

The pruning schedule really prunes (two stages, 70% then 45% of the prompt, different
tokens per example), and the scorer depends on the hidden states, so a wrong gather,
wrong positions or a wrong cache would change the numbers.
"""

import fractions
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax.inference import generation
from tpjax.data import squad_docs
from tpjax.models import decoder
from tpjax.pruning import sdtp_decoder

TINY = helpers.tiny_decoder_config()
SCHEDULE = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.45), keep_first=2,
                                 keep_last=0.1, step=4)
PROMPTS = [list(np.random.RandomState(0).randint(3, 96, 37)),
           list(np.random.RandomState(1).randint(3, 96, 29))]


def linear_scorer(w, stage, inputs):
  """A content-dependent stand-in for trained predictors."""
  return inputs.hidden @ w[stage]


@pytest.fixture(scope="module")
def tiny():
  model = decoder.DecoderModel(TINY)
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
  w = jax.random.normal(jax.random.PRNGKey(1), (2, TINY.hidden_size))
  return model, params, w


def _pad_right(prompts, seq):
  ids = np.zeros((len(prompts), seq), np.int32)
  valid = np.zeros((len(prompts), seq), bool)
  for i, p in enumerate(prompts):
    ids[i, :len(p)], valid[i, :len(p)] = p, True
  return ids, valid


def test_keep_ratio_one_equals_plain_decoder(tiny):
  model, params, w = tiny
  keep_all = sdtp_decoder.Schedule(layers=(2, 4), keep=(1.0, 1.0), keep_first=2, step=4)
  pruned = sdtp_decoder.PrunedPrefill(model, params, keep_all, linear_scorer, w)
  gen = generation.Generator(model, params, buckets=(48,))
  ids, valid = _pad_right(PROMPTS, 48)
  result = pruned.prefill(ids, valid)
  assert list(result.slots) == [48, 48, 40, 40, 40]  # the gather ran (48 -> 40 slots)
  assert list(result.kept) == [37] * 5
  _, logits, _, _ = gen.prefill(PROMPTS, 16, jax.random.PRNGKey(0), padding="right")
  np.testing.assert_allclose(result.logits, logits, atol=1e-4)
  greedy = pruned.greedy(result, 16)
  plain = gen.generate(PROMPTS, 16, padding="right", stop_at_eos=False)
  assert greedy.tolist() == plain


def test_compacted_prefill_equals_masked_prefill(tiny):
  model, params, w = tiny
  ids, valid = _pad_right(PROMPTS, 40)
  pruned = sdtp_decoder.PrunedPrefill(model, params, SCHEDULE, linear_scorer, w)
  result = pruned.prefill(ids, valid)
  n = valid.sum(1)
  positions = decoder.positions_from_mask(jnp.asarray(valid))
  mask_fn = sdtp_decoder.hard_mask_fn(SCHEDULE, linear_scorer, w, jnp.asarray(n))
  hidden, masks, kv = sdtp_decoder.masked_prefill(TINY, params, jnp.asarray(ids), positions,
                                                  jnp.asarray(valid), SCHEDULE, mask_fn)
  masks = np.asarray(masks) > 0.5
  # It really prunes, differently per example, and keeps the always-kept tokens.
  assert masks[-1].sum(1).tolist() == [17, 14]  # ceil(.45 n)
  assert not np.array_equal(masks[-1, 0, :29], masks[-1, 1, :29])
  assert masks[-1, 0, :2].all() and masks[-1, 0, 33:37].all()
  assert list(result.slots) == [40, 40, 28, 28, 20]
  assert list(result.kept) == [37, 37, 26, 26, 17]
  assert result.kept_per_row.tolist() == [[37, 37, 26, 26, 17], [29, 29, 21, 21, 14]]
  last = np.asarray(n) - 1
  masked_logits = model.apply({"params": params}, hidden[np.arange(2), last],
                              method=model.head)
  np.testing.assert_allclose(result.logits, masked_logits, atol=1e-5)
  # Each layer's cache holds exactly its surviving tokens, at their original positions.
  layer_mask = [valid] * 2 + [masks[0]] * 2 + [masks[1]]
  worst = 0.0
  for l, (keys, values) in enumerate(result.kv):
    for row in range(2):
      kept = np.flatnonzero(layer_mask[l][row])
      slots = np.asarray(result.valid[l][row])
      assert slots.sum() == len(kept)
      assert np.asarray(result.positions[l][row])[slots].tolist() == kept.tolist()
      for ours, full in ((keys, kv[l][0]), (values, kv[l][1])):
        a = np.asarray(ours)[row][:, slots]
        b = np.asarray(full)[row][:, kept]
        worst = max(worst, float(np.abs(a - b).max()))
  assert worst < 1e-5


def test_decoding_continues_at_position_n_with_pruned_cache(tiny):
  """Logits of the true continuation, through each layer's pruned cache, equal a full
  masked forward over prompt + continuation where only the prompt was pruned."""
  model, params, w = tiny
  prompt, steps = PROMPTS[0], 6
  cont = [5, 44, 17, 80, 9, 61]
  ids, valid = _pad_right([prompt], 40)
  pruned = sdtp_decoder.PrunedPrefill(model, params, SCHEDULE, linear_scorer, w)
  result = pruned.prefill(ids, valid)
  nll = pruned.continuation_nll(result, np.array([cont]))
  n = jnp.array([len(prompt)])
  mask_fn = sdtp_decoder.hard_mask_fn(SCHEDULE, linear_scorer, w, n)
  seq = jnp.asarray(ids[:, :len(prompt)])
  pos = jnp.arange(len(prompt))[None]
  _, masks, _ = sdtp_decoder.masked_prefill(TINY, params, seq, pos, jnp.ones_like(seq, bool),
                                            SCHEDULE, mask_fn)
  full = jnp.asarray([prompt + cont])
  ones = jnp.ones((1, steps))
  fixed = lambda stage, _: jnp.concatenate([masks[stage], ones], axis=1)
  hidden, _, _ = sdtp_decoder.masked_prefill(
      TINY, params, full, jnp.arange(full.shape[1])[None], jnp.ones_like(full, bool),
      SCHEDULE, fixed)
  logp = jax.nn.log_softmax(model.apply({"params": params}, hidden, method=model.head))
  at = np.arange(len(prompt) - 1, len(prompt) + steps - 1)
  expected = -np.asarray(logp[0, at, np.array(cont)])
  np.testing.assert_allclose(nll[0], expected, atol=1e-4)


def test_recency_baseline_keeps_first_and_last():
  positions = jnp.arange(20)[None]
  n = jnp.array([20])
  always = sdtp_decoder.always_kept(positions, n, 4, 0.1)
  k = sdtp_decoder.kept_count(n, 0.5, 4, 0.1)
  inputs = sdtp_decoder.StageInputs(None, positions, jnp.ones((1, 20), bool), n, None, {})
  mask = sdtp_decoder.keep_mask(sdtp_decoder.recency_scorer(None, 0, inputs),
                                jnp.ones((1, 20), bool), always, k)
  assert np.flatnonzero(mask[0]).tolist() == [0, 1, 2, 3] + list(range(14, 20))


def test_schedule_default_and_errors():
  s = sdtp_decoder.default_schedule(30)
  assert s.layers == (4, 7, 10, 13, 16, 19, 22, 25, 28)
  np.testing.assert_allclose(s.keep[-1], 0.9 ** 9)
  with pytest.raises(ValueError, match="one ratio per layer"):
    sdtp_decoder.Schedule(layers=(2, 4), keep=(0.5,))
  with pytest.raises(ValueError, match="non-increasing"):
    sdtp_decoder.Schedule(layers=(2, 4), keep=(0.5, 0.7))
  config = decoder.DecoderConfig(num_hidden_layers=30)
  frac = sdtp_decoder.keep_fraction(config, s, 1000)
  # By hand: stage s keeps ceil(0.9^(s+1) * 1000) of 1000 tokens (above the 4 + 100
  # always kept), from its layer on.
  kept = [1000] * 30
  for stage, layer in enumerate(range(4, 30, 3)):
    count = math.ceil(fractions.Fraction(9, 10) ** (stage + 1) * 1000)
    kept[layer:] = [count] * (30 - layer)
  assert kept[-1] == 388
  d, heads, hd = config.hidden_size, config.num_attention_heads, config.head_dim
  kv = config.num_key_value_heads * hd

  def macs(counts):
    # q and o projections, k and v, causal scores and values, SwiGLU; the LM head once.
    layers = sum(n * (2 * d * heads * hd + 2 * d * kv) + heads * hd * n * (n + 1) +
                 3 * n * d * config.intermediate_size for n in counts)
    return layers + d * config.vocab_size

  assert frac["final_kept"] == 0.388
  assert frac["token_layers_kept"] == pytest.approx(sum(kept) / 30000, rel=1e-12)
  assert frac["relative_macs"] == pytest.approx(macs(kept) / macs([1000] * 30), rel=1e-12)


def test_squad_split_and_f1(tmp_path):
  articles = squad_docs.load_articles()
  train, evaluation = squad_docs.split(articles)
  assert len(train) == len(evaluation) == 24
  assert not {a.title for a in train} & {a.title for a in evaluation}
  assert squad_docs.f1("The Denver Broncos.", ["Denver Broncos"]) == 1.0
  assert squad_docs.f1("Broncos team", ["Denver Broncos"]) == pytest.approx(0.5)
  assert squad_docs.f1("Carolina", ["Denver Broncos"]) == 0.0
  art = evaluation[0]
  q = art.questions[0]
  context = squad_docs.qa_context(art, q, 300, lambda t: len(t.split()))
  assert art.paragraphs[q.paragraph] in context
  assert len(context.split()) <= 300
  with pytest.raises(FileNotFoundError, match="SQuAD"):
    squad_docs.load_articles(str(tmp_path / "missing.json"))


def test_decoder_saliency_probe_matches_finite_difference(tiny):
  """Gradient times input at the pruning layers of the tiny decoder (through
  sdtp.saliency_targets) equals a finite-difference estimate: scaling one token's
  hidden state entering a pruning layer by (1 + eps) changes T by eps * saliency."""
  from tpjax.pruning import sdtp  # pylint: disable=g-import-not-at-top
  _, params, _ = tiny
  ids = jnp.asarray([PROMPTS[0][:32]])
  weights = jnp.zeros((1, 31)).at[:, -8:].set(1.0)
  target_fn = sdtp_decoder.probe_target_fn(TINY, params, ids, SCHEDULE.layers, weights)
  shapes = [(1, 32, TINY.hidden_size)] * 2
  targets, value = sdtp.saliency_targets(target_fn, shapes, "raw")
  zeros = tuple(jnp.zeros(s) for s in shapes)
  _, hiddens = target_fn(zeros)
  eps = 1e-2
  for stage in (0, 1):
    token = int(np.argmax(np.abs(np.asarray(targets[stage][0, :24]))))  # most salient
    def shifted(scale):
      probes = list(zeros)
      probes[stage] = probes[stage].at[0, token].set(scale * hiddens[stage][0, token])
      return float(target_fn(tuple(probes))[0])
    fd = (shifted(eps) - shifted(-eps)) / (2 * eps)  # central difference
    assert abs(float(targets[stage][0, token])) > 1e-4
    np.testing.assert_allclose(float(targets[stage][0, token]), fd, rtol=2e-2, atol=2e-5)


def test_predictors_round_trip_and_ratio_override(tmp_path):
  params = sdtp_decoder.init_predictors(TINY, SCHEDULE, jax.random.PRNGKey(1))
  sdtp_decoder.save_predictors(str(tmp_path), params, SCHEDULE, {"windows": 3})
  loaded, schedule, meta = sdtp_decoder.load_predictors(str(tmp_path), TINY)
  with open(tmp_path / "predictors.msgpack", "rb") as f:  # results cite the file's hash
    digest = hashlib.sha256(f.read()).hexdigest()
  assert schedule == SCHEDULE and meta == {"windows": 3, "sha256": digest}
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # The same modules at another keep ratio: r^(s+1) at the same layers.
  _, other, _ = sdtp_decoder.load_predictors(str(tmp_path), TINY, ratio=0.5)
  assert other.layers == SCHEDULE.layers
  np.testing.assert_allclose(other.keep, (0.5, 0.25))


# A schedule whose second stage does not shrink the compaction bucket: stage 0 keeps
# 26 of 37 tokens (32 slots of 40), stage 1 keeps 23 (still 32 slots). Issue 25, item 1:
# such a stage used to be skipped, so 26 tokens reached layer 4 instead of 23.
FLAT = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.6), keep_first=2,
                             keep_last=0.1, step=16)


def _masked_reference(model, params, ids, valid, schedule, score_fn, score_params):
  n = jnp.asarray(valid.sum(1))
  positions = decoder.positions_from_mask(jnp.asarray(valid))
  mask_fn = sdtp_decoder.hard_mask_fn(schedule, score_fn, score_params, n)
  hidden, masks, _ = sdtp_decoder.masked_prefill(
      TINY, params, jnp.asarray(ids), positions, jnp.asarray(valid), schedule, mask_fn)
  last = np.asarray(n) - 1
  logits = model.apply({"params": params}, hidden[np.arange(len(last)), last],
                       method=model.head)
  return logits, np.asarray(masks) > 0.5


def _check_against_masked(model, params, schedule, score_fn, score_params):
  """Compacted prefill == masked reference: logits, and each layer's tokens."""
  ids, valid = _pad_right(PROMPTS, 40)
  result = sdtp_decoder.PrunedPrefill(model, params, schedule, score_fn,
                                      score_params).prefill(ids, valid)
  logits, masks = _masked_reference(model, params, ids, valid, schedule, score_fn,
                                    score_params)
  np.testing.assert_allclose(result.logits, logits, atol=1e-5)
  layer_mask = [valid] * 2 + [masks[0]] * 2 + [masks[1]]
  for l in range(TINY.num_hidden_layers):
    for row in range(2):
      slots = np.asarray(result.valid[l][row])
      assert (np.asarray(result.positions[l][row])[slots].tolist()
              == np.flatnonzero(layer_mask[l][row]).tolist())
  return result, masks


def test_stage_whose_bucket_does_not_shrink_still_prunes(tiny):
  model, params, w = tiny
  result, masks = _check_against_masked(model, params, FLAT, linear_scorer, w)
  assert list(result.slots) == [40, 40, 32, 32, 32]   # stage 1: no shrink
  assert list(result.kept) == [37, 37, 26, 26, 23]    # ... but its tokens are dropped
  assert masks.sum(2).tolist() == [[26, 21], [23, 18]]
  # The dropped tokens are still in the layer-4 array as invalid slots, not attended to.
  dropped = masks[0, 0] & ~masks[1, 0]
  assert dropped.sum() == 3
  in_array = np.asarray(result.positions[4][0])
  assert set(np.flatnonzero(dropped)) <= set(in_array[~np.asarray(result.valid[4][0])])


def test_schedule_refuses_prunable_last_token():
  with pytest.raises(ValueError, match="last prompt token"):
    sdtp_decoder.Schedule(layers=(2,), keep=(0.5,), keep_last=0.0)
  # Any keep_last > 0 keeps the last token: ceil(keep_last * n) >= 1.
  s = sdtp_decoder.Schedule(layers=(2,), keep=(0.5,), keep_first=0, keep_last=1e-3)
  always = sdtp_decoder.always_kept(jnp.arange(50)[None], jnp.array([50]), 0, s.keep_last)
  assert np.flatnonzero(always[0]).tolist() == [49]


def _oracle_table():
  return jax.random.uniform(jax.random.PRNGKey(7), (2, 2, 40))


@pytest.mark.parametrize("name", ["recency", "random", "attention", "oracle"])
def test_baselines_share_the_pipeline_counts_and_always_kept(tiny, name):
  """Every training-free selector runs through the same compacting prefill, equals its
  masked reference, keeps the same number of tokens as SDTP and the always-kept ones."""
  model, params, _ = tiny
  score_fn, score_params = {
      "recency": (sdtp_decoder.recency_scorer, None),
      "random": (sdtp_decoder.random_scorer, jax.random.PRNGKey(3)),
      "attention": (sdtp_decoder.attention_scorer(TINY, last=3), None),
      "oracle": (sdtp_decoder.oracle_scorer, _oracle_table()),
  }[name]
  result, masks = _check_against_masked(model, params, FLAT, score_fn, score_params)
  assert result.kept_per_row.tolist() == [[37, 37, 26, 26, 23], [29, 29, 21, 21, 18]]
  n = (37, 29)
  for row in range(2):
    assert masks[-1, row, :2].all() and masks[-1, row, n[row] - 3:n[row]].all()
  if name == "recency":
    assert np.flatnonzero(masks[-1, 0]).tolist() == [0, 1] + list(range(16, 37))


def test_random_scorer_is_seeded_and_depends_on_position_only():
  positions = jnp.asarray([[0, 5, 9, 3, 7]])
  inputs = sdtp_decoder.StageInputs(None, positions, None, None, None, {})
  a = sdtp_decoder.random_scorer(jax.random.PRNGKey(0), 1, inputs)
  np.testing.assert_array_equal(a, sdtp_decoder.random_scorer(jax.random.PRNGKey(0), 1,
                                                              inputs))
  assert not np.allclose(a, sdtp_decoder.random_scorer(jax.random.PRNGKey(1), 1, inputs))
  assert not np.allclose(a, sdtp_decoder.random_scorer(jax.random.PRNGKey(0), 0, inputs))
  moved = inputs.replace(positions=positions[:, ::-1])
  np.testing.assert_array_equal(
      sdtp_decoder.random_scorer(jax.random.PRNGKey(0), 1, moved), a[:, ::-1])
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < 1))


def test_attention_received_matches_the_layers_attention(tiny):
  """Scores = the layer's own attention probabilities (decoder.attend with one-hot
  values), from the last 3 live queries, averaged over heads and queries."""
  _, params, _ = tiny
  layer = decoder.layer_params(params, 1)
  hidden = jax.random.normal(jax.random.PRNGKey(5), (1, 12, TINY.hidden_size))
  positions = jnp.asarray([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]])
  live = jnp.asarray([[1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0]], bool)  # last slot: padding
  got = sdtp_decoder.attention_received(TINY, layer, hidden, positions, live, last=3)
  x = decoder.RMSNorm(TINY.rms_norm_eps).apply({"params": layer["input_layernorm"]},
                                                hidden)
  q, k, _ = decoder.SelfAttention(TINY).apply({"params": layer["self_attn"]}, x,
                                              positions, method="_qkv")
  # One-hot values (padded to head_dim columns) turn the output into the probabilities.
  eye = jnp.broadcast_to(jnp.eye(12, TINY.head_dim), (1, TINY.num_key_value_heads, 12,
                                                      TINY.head_dim))
  probs = decoder.attend(q, k, eye, positions, positions, live)[..., :12]
  queries = [8, 9, 10]  # the live tokens with the largest positions
  want = np.asarray(probs)[0, queries].mean(axis=(0, 1, 2))
  want = np.where(np.asarray(live[0]), want, 0.0)
  np.testing.assert_allclose(got[0], want, atol=1e-6)
  assert np.asarray(got)[0, [2, 6, 11]].tolist() == [0.0, 0.0, 0.0]
  np.testing.assert_allclose(np.asarray(got).sum(), 1.0, atol=1e-5)


def test_oracle_scorer_keeps_the_most_salient():
  positions = jnp.arange(10)[None]
  n = jnp.array([10])
  saliency = jnp.asarray([[[0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.0, 0.0, 0.0]]])
  inputs = sdtp_decoder.StageInputs(None, positions, jnp.ones((1, 10), bool), n, None, {})
  schedule = sdtp_decoder.Schedule(layers=(1,), keep=(0.6,), keep_first=1, keep_last=0.1)
  mask = sdtp_decoder.select_mask(schedule, sdtp_decoder.oracle_scorer, saliency, 0, inputs)
  # 6 kept: positions 0 and 9 always, then 1, 3, 5, 6 by saliency.
  assert np.flatnonzero(mask[0]).tolist() == [0, 1, 3, 5, 6, 9]


def test_masked_prefill_remat_recomputes_each_layer(tiny):
  """remat=True (the pruned training recipe's memory bound) puts every layer in a
  checkpoint; the values are the same either way, so only the program can tell."""
  _, params, _ = tiny
  seq = jnp.ones((1, 16), jnp.int32)
  pos, valid = jnp.arange(16)[None], jnp.ones((1, 16), bool)
  none = sdtp_decoder.Schedule(layers=(), keep=())

  def program(remat):
    return str(jax.make_jaxpr(lambda p: sdtp_decoder.masked_prefill(
        TINY, p, seq, pos, valid, none, None, remat=remat)[0])(params))
  assert program(True).count("prevent_cse") == TINY.num_hidden_layers  # remat params
  assert "prevent_cse" not in program(False)
