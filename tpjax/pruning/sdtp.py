"""SDTP: saliency-driven token pruning (Tao et al. 2025; methods.md section 3).

Model-agnostic pure functions shared by the encoder method (`sdtp_encoder`) and the
decoder prefill. A "location" is a point in the model where tokens may be pruned; the
hidden state there is x_s <float32>[batch, seq, d].

Saliency targets (`saliency_targets`), gradient times input of the frozen model:

    pi_hat_s[b, t] = sum_d dT/dx_s[b, t, d] * x_s[b, t, d]

computed with zero probes p_s added to x_s, one backward pass for all locations. The
caller writes the model forward as

    target_fn(probes) -> (T, hiddens)

    probes   tuple over locations of <float32>[batch, seq_s, d_s], zeros; the forward
             adds probes[s] to the hidden state at location s
    T        <float32>[] the target scalar, summed over the batch (a sum keeps every
             example's gradient its own): e.g. the gold-class logit or the task loss
             (encoder), the next-token loss (decoder)
    hiddens  tuple over locations of <float32>[batch, seq_s, d_s], x_s (the value the
             probe is added to)

Normalisations (`SALIENCY_NORMS`): 'raw' (signed pi_hat), 'abs' (|pi_hat|), 'seq_max'
(|pi_hat| divided by its maximum over the sequence's valid tokens, in [0, 1]).

Prediction module (`Predictor`) per location: Dense(d -> d/4) -> GELU -> Dense(-> 2),
logits ordered (drop, keep). The MSE compares the keep probability
pi = softmax(logits)[keep] with the saliency; top-k at inference ranks by the
keep-minus-drop logit (same order, no float saturation). The ranking loss takes
either (the encoder ranks pi, the decoder the logit: there the MSE pulls pi towards
tiny targets, where differences of pi vanish).

Training: a straight-through Gumbel-softmax keep mask per location (`gumbel_keep`,
binary forward, the soft sample's gradient backward), multiplied across locations,
applied in attention through the policy softmax (`policy_softmax`, DynamicViT's
G_ij = M_j for i != j, G_ii = 1, optionally causal). `gumbel_top_k_keep` is the
variant with the inference kept count exactly (top-k of Gumbel-perturbed scores
forward, a sigmoid around the row's cut backward), used by the decoder's 'pruned'
training recipe. Losses: task + MSE(pi, pi_hat)
(`mse_loss`) + pairwise ranking (`ranking_loss`), each over valid (real, prunable)
tokens only; optional DynamicViT ratio loss (`ratio_loss`).

Inference: each location keeps the top-k tokens by predicted score, k = ratio_s times
the original length with ratio_s = r^s by default (`geometric_ratios`), always-kept
positions first, original order kept (`top_k_keep` as a mask, `top_k_indices` as
sorted indices for static-k gathers).
"""

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SALIENCY_NORMS = ("raw", "abs", "seq_max")
KEEP, DROP = 1, 0  # columns of the predictor's logits

TargetFn = Callable[[tuple], tuple[jax.Array, tuple]]


# ------------------------------------------------------------------------ saliency


def normalize_saliency(saliency: jax.Array, valid: Optional[jax.Array],
                       norm: str) -> jax.Array:
  """Applies a `SALIENCY_NORMS` normalisation; invalid tokens get 0.

  Args:
    saliency: <float32>[batch, seq] raw gradient-times-input.
    valid: <bool>[batch, seq] tokens that count (the per-sequence max is over them),
      or None (all).
    norm: 'raw', 'abs' or 'seq_max'.
  Returns:
    <float32>[batch, seq].
  """
  if norm not in SALIENCY_NORMS:
    raise ValueError(f"saliency norm {norm!r} is not one of {SALIENCY_NORMS}.")
  if valid is None:
    valid = jnp.ones(saliency.shape, bool)
  if norm == "raw":
    out = saliency
  else:
    out = jnp.abs(saliency)
    if norm == "seq_max":
      top = jnp.max(jnp.where(valid, out, 0.0), axis=-1, keepdims=True)
      out = out / jnp.maximum(top, 1e-12)
  return jnp.where(valid, out, 0.0)


def saliency_targets(target_fn: TargetFn, probe_shapes: Sequence[tuple[int, ...]],
                     norm: str = "raw",
                     valid: Optional[Sequence[jax.Array]] = None
                     ) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """Gradient-times-input saliency at every location, one backward pass.

  Args:
    target_fn: probes -> (T, hiddens), see the module docstring.
    probe_shapes: per location (batch, seq_s, d_s), the shapes of the probes.
    norm: one of `SALIENCY_NORMS`.
    valid: per location <bool>[batch, seq_s] tokens that count for 'seq_max' (and
      that get a non-zero target), or None (all tokens).
  Returns:
    (per location <float32>[batch, seq_s] targets, T <float32>[]). Gradients do not
    flow out of the targets.
  """
  probes = tuple(jnp.zeros(shape, jnp.float32) for shape in probe_shapes)
  (value, hiddens), grads = jax.value_and_grad(target_fn, has_aux=True)(probes)
  targets = []
  for s, (g, x) in enumerate(zip(grads, hiddens)):
    raw = jnp.sum(g * x, axis=-1)
    targets.append(normalize_saliency(raw, None if valid is None else valid[s], norm))
  return jax.lax.stop_gradient(tuple(targets)), jax.lax.stop_gradient(value)


# ----------------------------------------------------------------------- predictor


class Predictor(nn.Module):
  """One location's prediction module: Dense(d -> d/4) -> GELU -> Dense(-> 2).

  Input <float32>[batch, seq, d]; output <float32>[batch, seq, 2] logits (drop, keep).
  """

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    x = nn.Dense(max(1, hidden.shape[-1] // 4), name="fc1")(hidden)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(2, name="fc2")(x)


def keep_probability(logits: jax.Array) -> jax.Array:
  """pi, the predicted keep probability: [batch, seq, 2] -> <float32>[batch, seq]."""
  return jax.nn.softmax(logits, axis=-1)[..., KEEP]


def keep_score(logits: jax.Array) -> jax.Array:
  """Ranking score for top-k, keep minus drop logit (monotone in pi): -> [batch, seq]."""
  return logits[..., KEEP] - logits[..., DROP]


# -------------------------------------------------------------------------- masks


def gumbel_keep(logits: jax.Array, rng: jax.Array, tau: float = 1.0) -> jax.Array:
  """Straight-through Gumbel-softmax keep decision per token.

  Forward: the hard sample, 1.0 (keep) or 0.0 (drop); backward: the gradient of the
  soft sample softmax((logits + g) / tau)[keep].

  Args:
    logits: <float32>[batch, seq, 2] (drop, keep).
    rng: PRNG key for the Gumbel noise.
    tau: temperature.
  Returns:
    <float32>[batch, seq] in {0, 1}.
  """
  noise = jax.random.gumbel(rng, logits.shape, logits.dtype)
  soft = jax.nn.softmax((logits + noise) / tau, axis=-1)[..., KEEP]
  hard = (jnp.argmax(logits + noise, axis=-1) == KEEP).astype(soft.dtype)
  return hard + (soft - jax.lax.stop_gradient(soft))  # exactly binary forward


def gumbel_top_k_keep(score: jax.Array, rng: jax.Array, live: jax.Array,
                      always: Optional[jax.Array], k: jax.Array,
                      tau: float = 1.0) -> jax.Array:
  """Straight-through Gumbel top-k: each row keeps exactly the k tokens inference would
  keep from the perturbed scores.

  Forward: `top_k_keep` of z = score + Gumbel noise (k tokens drawn without
  replacement, P proportional to exp(score)), so the kept count is the schedule's
  exactly, as at inference. Backward: the gradient of sigmoid((z - c) / tau), c the
  row's cut (midpoint of the lowest kept and the highest dropped z of the tokens that
  may be pruned, no gradient), so the tokens near the cut get the largest gradient.
  Always-kept and non-live tokens get their exact value and no gradient.

  Args:
    score: <float32>[batch, seq] keep scores (`keep_score`).
    rng: PRNG key for the noise.
    live: <bool>[batch, seq] tokens still present.
    always: <bool>[batch, seq] tokens never pruned, or None.
    k: <int32>[batch] tokens to keep per row, always-kept ones included.
    tau: temperature of the backward relaxation.
  Returns:
    <float32>[batch, seq], forward values in {0, 1}.
  """
  z = score + jax.random.gumbel(rng, score.shape, score.dtype)
  hard = top_k_keep(jax.lax.stop_gradient(z), live, always, k)
  free = prunable(live, always)
  low = jnp.min(jnp.where(free & (hard > 0.5), z, jnp.inf), -1, keepdims=True)
  high = jnp.max(jnp.where(free & (hard < 0.5), z, -jnp.inf), -1, keepdims=True)
  # A row where every free token is kept (or dropped) has one side only.
  cut = jnp.where(jnp.isfinite(low) & jnp.isfinite(high), (low + high) / 2,
                  jnp.where(jnp.isfinite(low), low, high))
  cut = jax.lax.stop_gradient(jnp.where(jnp.isfinite(cut), cut, 0.0))
  soft = jax.nn.sigmoid((z - cut) / tau)
  straight = hard + (soft - jax.lax.stop_gradient(soft))
  return jnp.where(free, straight, hard)


def cumulative_mask(previous: jax.Array, decision: jax.Array,
                    always: Optional[jax.Array] = None) -> jax.Array:
  """Stage mask M_s = M_{s-1} * decision, always-kept tokens forced to M_{s-1}.

  Args:
    previous: <float32>[batch, seq] the running mask (0 for padding).
    decision: <float32>[batch, seq] this location's keep decision.
    always: <bool>[batch, seq] tokens never pruned, or None.
  Returns:
    <float32>[batch, seq].
  """
  if always is not None:
    decision = jnp.where(always, 1.0, decision)
  return previous * decision


def policy_softmax(logits: jax.Array, key_weights: jax.Array,
                   causal: bool = False) -> jax.Array:
  """Attention probabilities with DynamicViT's policy G.

      A_ij = exp(a_ij) G_ij / sum_k exp(a_ik) G_ik,  G_ij = w_j (i != j), G_ii = 1,

  and G_ij = 0 for j > i when `causal`. Unlike an additive log-mask, the gradient with
  respect to a key weight is non-zero at w_j = 0, which the straight-through mask needs.

  Args:
    logits: <float32>[batch, heads, q, k] scaled scores (q == k: self-attention).
    key_weights: <float32>[batch, k] mask values in [0, 1] (0 for padding).
    causal: also apply the causal mask.
  Returns:
    <float32>[batch, heads, q, k]; rows sum to 1.
  """
  q, k = logits.shape[-2:]
  eye = jnp.eye(q, k, dtype=bool)
  policy = jnp.where(eye, 1.0, key_weights[:, None, None, :].astype(logits.dtype))
  if causal:
    policy = jnp.where(jnp.tril(jnp.ones((q, k), bool)), policy, 0.0)
  # The row max over all keys (zero-weight ones too, whose exp the weight's gradient
  # needs) keeps exp <= 1; the floor guards a row whose allowed logits all underflow.
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weighted = jnp.exp(logits - top) * policy
  return weighted / jnp.maximum(jnp.sum(weighted, axis=-1, keepdims=True), 1e-30)


# ------------------------------------------------------------------------- losses


def mse_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over valid tokens of (pi - pi_hat)^2.

  Args:
    pred: <float32>[batch, seq] pi.
    target: <float32>[batch, seq] pi_hat.
    valid: <bool>[batch, seq].
  Returns:
    <float32>[batch]; 0 for a row without valid tokens.
  """
  count = jnp.maximum(jnp.sum(valid, axis=-1), 1)
  return jnp.sum(jnp.where(valid, jnp.square(pred - target), 0.0), axis=-1) / count


def ranking_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Pairwise ranking loss in softplus form, mean over valid pairs.

      mean_{i < j, both valid, pi_hat_i != pi_hat_j}
          softplus(-(pi_i - pi_j) * sign(pi_hat_i - pi_hat_j))

  The paper writes the sum over pairs; the mean keeps unit loss weights meaningful
  across lengths. Ties in the target carry no order and are left out.

  Args:
    pred: <float32>[batch, seq] pi.
    target: <float32>[batch, seq] pi_hat.
    valid: <bool>[batch, seq].
  Returns:
    <float32>[batch]; 0 for a row without a valid pair.
  """
  seq = pred.shape[-1]
  upper = jnp.triu(jnp.ones((seq, seq), bool), k=1)  # i < j
  sign = jnp.sign(target[:, :, None] - target[:, None, :])
  pair = upper[None] & valid[:, :, None] & valid[:, None, :] & (sign != 0)
  term = jax.nn.softplus(-(pred[:, :, None] - pred[:, None, :]) * sign)
  count = jnp.maximum(jnp.sum(pair, axis=(1, 2)), 1)
  return jnp.sum(jnp.where(pair, term, 0.0), axis=(1, 2)) / count


def ratio_loss(masks: Sequence[jax.Array], ratios: Sequence[float], valid: jax.Array,
               weight: float = 2.0) -> jax.Array:
  """DynamicViT's ratio loss, weight * mean_s (mean kept fraction_s - rho_s)^2.

  Args:
    masks: per location <float32>[batch, seq] the cumulative training masks.
    ratios: per location rho_s, the target kept fraction.
    valid: <bool>[batch, seq] the tokens the fraction is over.
    weight: the loss weight (2.0 in DynamicViT).
  Returns:
    <float32>[batch].
  """
  count = jnp.maximum(jnp.sum(valid, axis=-1), 1)
  terms = [jnp.square(jnp.sum(jnp.where(valid, m, 0.0), axis=-1) / count - rho)
           for m, rho in zip(masks, ratios)]
  return weight * sum(terms) / max(len(terms), 1)


# ---------------------------------------------------------------------- inference


def geometric_ratios(num_stages: int, r: float) -> tuple[float, ...]:
  """Default keep ratios of the original length per stage: (r, r^2, ..., r^S)."""
  return tuple(r ** (s + 1) for s in range(num_stages))


def keep_count(lengths: jax.Array, ratio: float) -> jax.Array:
  """Tokens a stage keeps: ceil(ratio * original length), <int>[batch] -> <int32>[batch].

  A small epsilon keeps float error in ratio * length from adding a token.
  """
  return jnp.ceil(ratio * lengths.astype(jnp.float32) - 1e-4).astype(jnp.int32)


def top_k_keep(score: jax.Array, live: jax.Array, always: Optional[jax.Array],
               k: jax.Array) -> jax.Array:
  """Keeps each row's k best live tokens, always-kept tokens counted first.

  The result is a mask over the same positions, so the original order is untouched.
  Always-kept live tokens stay even where they outnumber k.

  Args:
    score: <float32>[batch, seq] predicted scores (higher is kept first).
    live: <bool>[batch, seq] tokens still present (not padding, not pruned).
    always: <bool>[batch, seq] tokens never pruned, or None.
    k: <int32>[batch] tokens to keep per row, always-kept ones included.
  Returns:
    <float32>[batch, seq] in {0, 1}.
  """
  ranked = jnp.where(live, score, -jnp.inf)
  if always is not None:
    ranked = jnp.where(always & live, jnp.inf, ranked)
  order = jnp.argsort(-ranked, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  keep = (rank < k[:, None]) & live
  if always is not None:
    keep = keep | (always & live)
  return keep.astype(jnp.float32)


def top_k_indices(score: jax.Array, live: jax.Array, always: Optional[jax.Array],
                  k: int) -> jax.Array:
  """Positions of each row's k best live tokens, ascending (original order).

  For a static k (compaction to a fixed length); rows with fewer than k live tokens
  are padded with their best-ranked dead positions, also in ascending order.

  Args:
    score: <float32>[batch, seq].
    live: <bool>[batch, seq].
    always: <bool>[batch, seq] or None; must number at most k per row.
    k: tokens to keep (static).
  Returns:
    <int32>[batch, k].
  """
  ranked = jnp.where(live, score, -jnp.inf)
  if always is not None:
    ranked = jnp.where(always & live, jnp.inf, ranked)
  _, index = jax.lax.top_k(ranked, k)
  return jnp.sort(index, axis=-1).astype(jnp.int32)


def prunable(valid: jax.Array, always: Optional[jax.Array]) -> jax.Array:
  """Tokens the losses count: valid and not always kept. <bool>[batch, seq]."""
  return valid if always is None else valid & ~always


def predictor_flops(hidden: int) -> int:
  """Multiply-accumulates of one Predictor per token (d * d/4 + d/4 * 2)."""
  quarter = max(1, hidden // 4)
  return hidden * quarter + quarter * 2

