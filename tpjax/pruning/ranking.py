"""ToP's ranking distillation loss (methods.md section 2), a pure function.

The teacher's top-K tokens get relevance y = K..1 by teacher rank; the student's
scores s for the same tokens are penalised pairwise:

    loss = sum_{y_i > y_j} |y_i - y_j| * log2(1 + exp(-(s_i - s_j))) / K^2
"""

import math

import jax
import jax.numpy as jnp


def ranking_loss(student: jax.Array, teacher: jax.Array, valid: jax.Array,
                 k: int) -> jax.Array:
  """Pairwise rank loss of the student's scores on the teacher's top-k tokens.

  Args:
    student: <float32>[batch, seq] student importance scores.
    teacher: <float32>[batch, seq] teacher importance scores (the ranking target).
    valid: <bool>[batch, seq] tokens allowed in the ranking (real, not [CLS], not
      pruned); rows with fewer than k valid tokens rank the ones they have.
    k: K, the number of teacher-ranked tokens; also the normaliser K^2.
  Returns:
    <float32>[batch].
  """
  top = min(k, teacher.shape[1])
  _, index = jax.lax.top_k(jnp.where(valid, teacher, -jnp.inf), top)  # best first
  s = jnp.take_along_axis(student, index, axis=1)
  ok = jnp.take_along_axis(valid, index, axis=1)
  rank = jnp.arange(top)
  # pair (i, j) with i ranked above j: y_i - y_j = j - i
  gap = (rank[None, :] - rank[:, None]).astype(jnp.float32)  # [i, j] = j - i
  pair = (gap > 0)[None] & ok[:, :, None] & ok[:, None, :]
  term = jax.nn.softplus(s[:, None, :] - s[:, :, None]) / math.log(2.0)  # log2(1+e^-(si-sj))
  return jnp.sum(jnp.where(pair, gap[None] * term, 0.0), axis=(1, 2)) / float(k * k)
