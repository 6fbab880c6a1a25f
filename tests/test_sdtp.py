"""SDTP's shared pure functions (tpjax/pruning/sdtp.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpjax.pruning import sdtp


def _toy_target_fn(batch=2, seq=5, dim=4, seed=0):
  """A two-location model with token mixing: probes -> (T, hiddens)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  x0 = jax.random.normal(keys[0], (batch, seq, dim))
  w1 = jax.random.normal(keys[1], (dim, dim)) / 2
  w2 = jax.random.normal(keys[2], (dim, dim)) / 2
  v = jax.random.normal(keys[3], (dim,))

  def target_fn(probes):
    h0 = x0 + probes[0]
    x1 = jnp.tanh(h0 @ w1 + jnp.mean(h0, axis=1, keepdims=True))  # mixes tokens
    h1 = x1 + probes[1]
    x2 = jnp.tanh(h1 @ w2 + jnp.mean(h1, axis=1, keepdims=True))
    return jnp.sum(jnp.mean(x2, axis=1) @ v), (x0, x1)

  return target_fn, [(batch, seq, dim)] * 2


def test_saliency_equals_finite_difference():
  target_fn, shapes = _toy_target_fn()
  targets, value = sdtp.saliency_targets(target_fn, shapes, norm="raw")
  _, hiddens = target_fn(tuple(jnp.zeros(s) for s in shapes))
  eps = 1e-3
  for s, (b, t) in itertools.product(range(2), [(0, 0), (0, 3), (1, 2), (1, 4)]):
    # d/de T(x_s[b, t] * (1 + e)) at e = 0 is sum_d dT/dx * x.
    def scaled(e):
      probes = [jnp.zeros(shape) for shape in shapes]
      probes[s] = probes[s].at[b, t].set(e * hiddens[s][b, t])
      return float(target_fn(tuple(probes))[0])
    estimate = (scaled(eps) - scaled(-eps)) / (2 * eps)
    np.testing.assert_allclose(float(targets[s][b, t]), estimate, rtol=2e-2, atol=2e-4)
  zeros = tuple(jnp.zeros(s) for s in shapes)
  assert float(value) == pytest.approx(float(target_fn(zeros)[0]))
  assert np.abs(np.asarray(targets[0])).min() > 0  # every token has its own value


def test_saliency_norms():
  raw = jnp.array([[0.5, -2.0, 1.0, 9.0]])
  valid = jnp.array([[True, True, True, False]])
  np.testing.assert_allclose(sdtp.normalize_saliency(raw, valid, "raw"), [[0.5, -2, 1, 0]])
  np.testing.assert_allclose(sdtp.normalize_saliency(raw, valid, "abs"), [[0.5, 2, 1, 0]])
  np.testing.assert_allclose(sdtp.normalize_saliency(raw, valid, "seq_max"),
                             [[0.25, 1, 0.5, 0]])
  with pytest.raises(ValueError, match="saliency norm"):
    sdtp.normalize_saliency(raw, valid, "max")


def test_ranking_loss_equals_double_loop():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(3, 6)).astype(np.float32)
  target = rng.normal(size=(3, 6)).astype(np.float32)
  target[1, 2] = target[1, 4]  # a tie: no order, left out
  valid = rng.random((3, 6)) > 0.3
  valid[2] = False
  valid[2, 1] = True  # one valid token: no pair
  got = np.asarray(sdtp.ranking_loss(jnp.asarray(pred), jnp.asarray(target),
                                     jnp.asarray(valid)))
  for b in range(3):
    total, count = 0.0, 0
    for i in range(6):
      for j in range(i + 1, 6):
        if valid[b, i] and valid[b, j] and target[b, i] != target[b, j]:
          sign = 1.0 if target[b, i] > target[b, j] else -1.0
          total += np.log1p(np.exp(-(pred[b, i] - pred[b, j]) * sign))
          count += 1
    expected = total / count if count else 0.0
    assert got[b] == pytest.approx(expected, rel=1e-5, abs=1e-7)
  assert got[0] > 0 and got[2] == 0


def test_ranking_loss_prefers_the_target_order():
  target = jnp.array([[3.0, 2.0, 1.0]])
  valid = jnp.ones((1, 3), bool)
  right = sdtp.ranking_loss(jnp.array([[0.9, 0.5, 0.1]]), target, valid)
  wrong = sdtp.ranking_loss(jnp.array([[0.1, 0.5, 0.9]]), target, valid)
  assert float(right[0]) < float(wrong[0])


def test_mse_loss_is_masked():
  pred = jnp.array([[0.2, 0.9, 5.0]])
  target = jnp.array([[0.0, 1.0, 0.0]])
  valid = jnp.array([[True, True, False]])
  np.testing.assert_allclose(sdtp.mse_loss(pred, target, valid), [(0.04 + 0.01) / 2],
                             rtol=1e-6)


def test_gumbel_mask_binary_forward_differentiable_backward():
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 2))
  mask = sdtp.gumbel_keep(logits, jax.random.PRNGKey(1))
  assert set(np.unique(np.asarray(mask))) == {0.0, 1.0}
  weights = jnp.arange(1.0, 17.0)
  grad = jax.grad(lambda l: jnp.sum(sdtp.gumbel_keep(l, jax.random.PRNGKey(1)) * weights))(
      logits)
  assert np.all(np.isfinite(grad)) and np.abs(np.asarray(grad)).min() > 0
  # The same noise decides the same way; higher keep logits keep more often.
  np.testing.assert_array_equal(mask, sdtp.gumbel_keep(logits, jax.random.PRNGKey(1)))
  bias = jnp.array([0.0, 3.0])
  rate = lambda l: float(jnp.mean(sdtp.gumbel_keep(l, jax.random.PRNGKey(2))))
  assert rate(logits + bias) > rate(logits) > rate(logits - bias)


def test_cumulative_mask_multiplies_and_protects():
  previous = jnp.array([[1.0, 1.0, 0.0, 1.0, 0.0]])
  decision = jnp.array([[0.0, 1.0, 1.0, 0.0, 1.0]])
  always = jnp.array([[True, False, False, False, False]])
  np.testing.assert_array_equal(sdtp.cumulative_mask(previous, decision, always),
                                [[1, 1, 0, 0, 0]])


def test_policy_softmax_matches_masked_softmax_and_passes_gradient():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 5)) * 3
  weights = jnp.array([[1.0, 0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
  probs = sdtp.policy_softmax(logits, weights)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  masked = jax.nn.softmax(jnp.where(weights[:, None, None] > 0, logits, -1e9), axis=-1)
  kept = np.asarray(weights) > 0
  for b in range(2):  # rows of kept tokens: plain masked attention
    np.testing.assert_allclose(probs[b][:, kept[b]], masked[b][:, kept[b]], atol=1e-6)
  # A dropped query still attends to itself (G_ii = 1).
  assert float(probs[0, 0, 1, 1]) > 0 and float(probs[0, 0, 1, 4]) == 0
  # The weight of a dropped key still receives a gradient.
  row = lambda w: sdtp.policy_softmax(logits, w)[:, :, 0, :]
  grad = jax.grad(lambda w: jnp.sum(row(w) * logits[:, :, 0, :]))(weights)
  assert abs(float(grad[0, 4])) > 0
  causal = sdtp.policy_softmax(logits, jnp.ones((2, 5)), causal=True)
  np.testing.assert_allclose(causal, jax.nn.softmax(
      jnp.where(jnp.tril(jnp.ones((5, 5), bool)), logits, -1e9), axis=-1), atol=1e-6)


def test_top_k_keeps_order_and_always_kept_set():
  score = jnp.array([[0.1, 5.0, 0.3, 4.0, 0.2, 9.0, 1.0],
                     [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
  live = jnp.array([[True, True, True, True, True, False, True],
                    [True, True, True, True, True, True, True]])
  always = jnp.zeros((2, 7), bool).at[:, 0].set(True).at[0, 6].set(True).at[1, 1].set(True)
  keep = np.asarray(sdtp.top_k_keep(score, live, always, jnp.array([4, 3])))
  # row 0: [CLS] and position 6 always, then the two best live (1 and 3); 5 is dead
  np.testing.assert_array_equal(keep[0], [1, 1, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(keep[1], [1, 1, 0, 0, 0, 0, 1])
  index = np.asarray(sdtp.top_k_indices(score, live, always, 4))
  np.testing.assert_array_equal(index, [[0, 1, 3, 6], [0, 1, 5, 6]])
  assert (np.diff(index, axis=1) > 0).all()  # original order
  # Always-kept tokens outnumbering k all stay.
  few = np.asarray(sdtp.top_k_keep(score, live, always, jnp.array([1, 1])))
  np.testing.assert_array_equal(few, np.asarray(always & live, np.float32))


def test_keep_counts_and_ratios():
  assert sdtp.geometric_ratios(3, 0.5) == (0.5, 0.25, 0.125)
  np.testing.assert_array_equal(sdtp.keep_count(jnp.array([10, 7, 1]), 0.3), [3, 3, 1])


def test_predictor_shapes():
  hidden = jnp.ones((2, 5, 16))
  module = sdtp.Predictor()
  params = module.init(jax.random.PRNGKey(0), hidden)
  assert params["params"]["fc1"]["kernel"].shape == (16, 4)
  logits = module.apply(params, hidden)
  assert logits.shape == (2, 5, 2)
  pi = sdtp.keep_probability(logits)
  assert pi.shape == (2, 5) and float(pi.min()) > 0 and float(pi.max()) < 1
  random = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2)) * 4
  np.testing.assert_array_equal(jnp.argsort(sdtp.keep_score(random)),
                                jnp.argsort(sdtp.keep_probability(random)))
