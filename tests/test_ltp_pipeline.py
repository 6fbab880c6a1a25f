"""LTP through the training loop: staged pipeline, frozen thresholds, invariance."""

import os

import jax
import numpy as np
import pytest

from tests import helpers
from tpjax.inference import loading
from tpjax.inference import predict
from tpjax.training import train
from tpjax.pruning import ltp


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
  return helpers.write_sst2(str(tmp_path_factory.mktemp("glue")))


def _ltp_config(glue_dir):
  config = helpers.tiny_config(glue_dir)
  config.num_devices = 2
  config.data.buckets = (32,)  # one train and one eval program per stage, not two
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.pruning.temperature = 0.01
  config.pruning.final_threshold = 0.02
  config.stage_settings.soft.pruning_learning_rate = 1e-2
  return config


def test_ltp_pipeline_end_to_end(glue_dir, tmp_path):
  config = _ltp_config(glue_dir)
  config.train.eval_every_steps = 8  # several hard-stage candidates to choose from
  summary = train.train_and_evaluate(config, str(tmp_path))
  stages = summary["stages"]
  assert list(stages) == ["finetune", "soft", "hard"]
  initial = np.asarray(ltp.threshold_schedule(0.02, 4))
  soft = np.array(stages["soft"]["pruning"]["thresholds"])
  hard = np.array(stages["hard"]["pruning"]["thresholds"])
  assert soft[0] == 0.0, "layer 0 must never prune"
  assert np.abs(soft - initial)[1:].min() > 1e-4, "thresholds should learn in the soft stage"
  np.testing.assert_array_equal(hard, soft)  # frozen in the hard stage
  dev = summary["dev"]["validation"]
  kept = np.array(dev["tokens_kept_per_layer"])
  assert len(kept) == 4 and kept[0] == 1.0
  # Really pruned: tokens go after layer 0 and FLOPs fall by more than rounding.
  print(f"kept per layer {kept}, relative FLOPs {dev['relative_flops']:.3f}, soft "
        f"thresholds moved by at least {np.abs(soft - initial)[1:].min():.2e}")
  assert kept[-1] < 0.9 and dev["relative_flops"] < 0.95, dev
  # Both numbers recounted by hand from the tokens the compaction engine
  # (`tpjax.predict`) keeps in each dev example with the handed-over weights.
  with open(os.path.join(glue_dir, "SST-2", "dev.tsv"), "rb") as f:
    texts = [line.rsplit(b"\t", 1)[0] for line in f.read().splitlines()[1:]]
  records = predict.Predictor(loading.load_run(str(tmp_path)), 8).predict_lines(texts, 1)
  n = np.array([r["tokens"] for r in records], np.float64)
  after = np.array([r["kept_per_layer"] for r in records], np.float64)
  d, d_ff = 32, 64  # configs/tiny.py

  def macs(attn, ffn):  # per layer: attention and QKV/output on the tokens entering
    return (2 * d * attn**2 + 4 * d**2 * attn + 2 * d * d_ff * ffn).sum()

  entering = np.concatenate([n[:, None], after[:, :-1]], 1)
  full = np.repeat(n[:, None], 4, axis=1)
  assert dev["relative_flops"] == pytest.approx(macs(entering, after) / macs(full, full),
                                                rel=1e-9)
  np.testing.assert_array_equal(kept, (after.mean(0) / n.mean()).round(4))
  assert summary["method"] == "ltp"
  # The hard stage hands over a checkpoint within the FLOPs the soft stage reached.
  soft_flops = stages["soft"]["dev"]["validation"]["relative_flops"]
  assert stages["hard"]["start_relative_flops"] == soft_flops
  assert stages["hard"]["flops_budget"] == pytest.approx(soft_flops + 0.005)
  assert dev["relative_flops"] <= soft_flops + 0.005
  assert stages["hard"]["flops_drift"] == pytest.approx(dev["relative_flops"] - soft_flops)
  # config.json records the variant's resolved choices, not None.
  assert summary["config"]["pruning"]["reg_norm"] == "live"
  assert summary["config"]["stage_settings"]["soft"]["clip_mode"] == "per_group"

  # A later run can start from this run's fine-tuned weights.
  config = _ltp_config(glue_dir)
  config.stages = ("soft",)
  config.init_from = str(tmp_path)
  again = train.train_and_evaluate(config, str(tmp_path / "from_finetuned"))
  assert list(again["stages"]) == ["soft"]


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
