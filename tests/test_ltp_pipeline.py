"""LTP's hard-stage evaluation does not depend on the batch around an example.

The staged pipeline (what each stage learns, freezes and hands over, and FLOPs
recounted by hand) is tested on test_train's LTP runs.
"""

import jax
import numpy as np

from tests import helpers
from tpjax.training import train


def test_hard_eval_does_not_depend_on_batch():
  case = helpers.pruning_case()
  model, params, tokenizer, method = case.model, case.params, case.tokenizer, case.method
  texts = case.texts[:4]
  step = jax.jit(lambda p, b: train.eval_step(p, b, model=model, method=method,
                                              stage="hard"))

  def run(batch_texts, length):
    batch = tokenizer(batch_texts, length=length)
    return jax.tree.map(np.asarray, step(params, batch))

  together = run(texts, 32)
  pruned = together["kept"][:, -1] < together["length"]
  assert pruned.sum() >= 2, "the case must prune in most examples"
  for i, text in enumerate(texts):
    alone = run([text], None)
    np.testing.assert_allclose(alone["logits"][0], together["logits"][i], atol=1e-6)
    np.testing.assert_array_equal(alone["kept"][0], together["kept"][i])
  reordered = run(texts[::-1] + ["filler words here"], 24)
  np.testing.assert_allclose(reordered["logits"][:4][::-1], together["logits"], atol=1e-6)
  np.testing.assert_array_equal(reordered["kept"][:4][::-1], together["kept"])
