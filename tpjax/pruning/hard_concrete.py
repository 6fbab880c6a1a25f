"""Hard-concrete gates (Louizos et al., 2018), as ToP uses them (methods.md section 2).

A gate z in [0, 1] is a stretched, clipped binary-concrete sample with location
log_alpha:

    u ~ U(eps, 1 - eps)
    z = clip(sigmoid((log u - log(1 - u) + log_alpha) / beta) * (r - l) + l, 0, 1)
    P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))

with l = -0.1, r = 1.1, beta = 2/3. z is exactly 0 or 1 with positive probability and
differentiable in log_alpha in between, so the expected number of open gates is a
differentiable L0 penalty.
"""

import math

import jax
import jax.numpy as jnp

LOW = -0.1
HIGH = 1.1
BETA = 2.0 / 3.0
EPS = 1e-6
LOG_ALPHA_RANGE = (-4.6, 4.6)  # clamp after every optimizer step (ToP reference)

# beta * log(-l / r): the shift between log_alpha and the logit of P(z != 0).
_SHIFT = BETA * math.log(-LOW / HIGH)


def sample(log_alpha: jax.Array, rng: jax.Array) -> jax.Array:
  """One gate sample per entry of `log_alpha`: <float32>[...] -> <float32>[...] in [0, 1]."""
  u = jax.random.uniform(rng, log_alpha.shape, jnp.float32, EPS, 1.0 - EPS)
  s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / BETA)
  return jnp.clip(s * (HIGH - LOW) + LOW, 0.0, 1.0)


def prob_open(log_alpha: jax.Array) -> jax.Array:
  """P(z != 0): <float32>[...] -> <float32>[...]."""
  return jax.nn.sigmoid(log_alpha - _SHIFT)


def log_alpha_for(prob: float) -> float:
  """The log_alpha whose P(z != 0) is `prob` (0 < prob < 1)."""
  return math.log(prob / (1.0 - prob)) + _SHIFT


def clamp(log_alpha: jax.Array) -> jax.Array:
  return jnp.clip(log_alpha, *LOG_ALPHA_RANGE)
