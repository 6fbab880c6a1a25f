"""LTP through the training loop: staged pipeline, frozen thresholds, invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax import train
from tpjax.pruning import ltp
from tpjax.pruning import registry


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
  return helpers.write_sst2(str(tmp_path_factory.mktemp("glue")))


def _ltp_config(glue_dir):
  config = helpers.tiny_config(glue_dir)
  config.num_devices = 2
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.pruning.temperature = 0.01
  config.pruning.final_threshold = 0.02
  config.stage_settings.soft.pruning_learning_rate = 1e-2
  return config


def test_ltp_pipeline_end_to_end(glue_dir, tmp_path):
  config = _ltp_config(glue_dir)
  summary = train.train_and_evaluate(config, str(tmp_path))
  stages = summary["stages"]
  assert list(stages) == ["finetune", "soft", "hard"]
  initial = np.asarray(ltp.threshold_schedule(0.02, 2))
  soft = np.array(stages["soft"]["pruning"]["thresholds"])
  hard = np.array(stages["hard"]["pruning"]["thresholds"])
  assert np.abs(soft - initial).max() > 1e-4, "thresholds should learn in the soft stage"
  np.testing.assert_array_equal(hard, soft)  # frozen in the hard stage
  dev = summary["dev"]["validation"]
  assert 0 < dev["relative_flops"] <= 1.0
  assert len(dev["tokens_kept_per_layer"]) == 2
  assert summary["method"] == "ltp"

  # A later run can start from this run's fine-tuned weights.
  config = _ltp_config(glue_dir)
  config.stages = ("soft",)
  config.init_from = str(tmp_path)
  again = train.train_and_evaluate(config, str(tmp_path / "from_finetuned"))
  assert list(again["stages"]) == ["soft"]


def test_hard_eval_does_not_depend_on_batch(glue_dir):
  config = _ltp_config(glue_dir)
  config.pruning.score_norm = "fixed"
  model, model_params, tokenizer = train.build_model(config, 2, jax.random.PRNGKey(3))
  method = registry.get_method(config.pruning, model.config)
  params = {"model": model_params, "pruning": {"delta": jnp.array([0.0, 0.004])}}
  texts = ["good film", "the plot is very dull and the acting awful", "a",
           "not a great story but fine acting"]
  step = jax.jit(lambda p, b: train.eval_step(p, b, model=model, method=method,
                                              stage="hard"))

  def run(batch_texts, length):
    batch = tokenizer(batch_texts, length=length)
    return jax.tree.map(np.asarray, step(params, batch))

  together = run(texts, 32)
  assert together["kept"][:, -1].min() < together["length"].max(), "nothing was pruned"
  for i, text in enumerate(texts):
    alone = run([text], None)
    np.testing.assert_allclose(alone["logits"][0], together["logits"][i], atol=1e-5)
    np.testing.assert_array_equal(alone["kept"][0], together["kept"][i])
  reordered = run(texts[::-1] + ["filler words here"], 24)
  np.testing.assert_allclose(reordered["logits"][:4][::-1], together["logits"], atol=1e-5)
