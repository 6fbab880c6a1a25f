"""The training loop end to end on a tiny config with 8 simulated CPU devices."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from tests import helpers
from tpjax.training import train
from tpjax.data import batching
from tpjax.inference import loading
from tpjax.inference import predict
from tpjax.models import classifier
from tpjax.pruning import ltp


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
  return helpers.write_sst2(str(tmp_path_factory.mktemp("glue")))


def _tokenizer(config):
  return classifier.build(config, 2, jax.random.PRNGKey(0))[2]


def _losses(workdir, stage="finetune"):
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _dev_accuracy(glue_dir, workdir, examples=24):
  """The best checkpoint's accuracy on the dev TSV of `examples` rows, recounted from
  the predictions of `tpjax.predict`'s engine and the file's labels."""
  with open(os.path.join(glue_dir, "SST-2", "dev.tsv"), "rb") as f:
    rows = [line.rsplit(b"\t", 1) for line in f.read().splitlines()[1:]]
  records = predict.Predictor(loading.load_run(str(workdir)), 8).predict_lines(
      [text for text, _ in rows], 1)
  right = [r["label"] == int(label) for r, (_, label) in zip(records, rows, strict=True)]
  assert len(right) == examples
  return sum(right) / len(right)


_STAGES = ("finetune", "soft", "hard")


@pytest.fixture(scope="module")
def ltp_glue_dir(tmp_path_factory):
  """60 training and 20 dev examples: in batches of 8, each epoch and each dev pass
  ends with a partial batch (4 rows), which 8 devices x 1 must weigh like 1 x 8."""
  return helpers.write_sst2(str(tmp_path_factory.mktemp("ltp_glue")), n_train=60,
                            n_dev=20)


@pytest.fixture(scope="module")
def ltp_runs(ltp_glue_dir, tmp_path_factory):
  """LTP's three stages, an epoch each, on 1 device x 8 examples and on 8 devices x 1:
  {devices: (workdir, summary, {stage: {step: loss}})}.

  No dropout: each device draws its own masks, so the two could not be compared.
  One bucket length: each stage compiles one train and one eval program per device
  count, not two (test_interrupted_then_resumed_equals_uninterrupted trains on two).
  """
  base = tmp_path_factory.mktemp("ltp_runs")
  runs = {}
  for devices, per_device in ((1, 8), (8, 1)):
    # Judged every 4 of an epoch's 8 steps: the hard stage chooses among candidates.
    config = helpers.tiny_config(ltp_glue_dir, log_every_steps=1, eval_every_steps=4)
    config.data.buckets = (32,)
    config.stages = _STAGES
    config.pruning.method = "ltp"
    # Scores over the live tokens (about 1/12 each here), not over 128 positions: a
    # threshold tuned for 128 tokens would prune every short sentence to [CLS].
    config.pruning.score_norm = "live"
    config.pruning.temperature = 0.01
    config.pruning.final_threshold = 0.06
    config.stage_settings.soft.pruning_learning_rate = 1e-2
    config.num_devices = devices
    config.data.per_device_batch_size = per_device
    config.data.per_device_eval_batch_size = per_device
    config.model.overrides.hidden_dropout_prob = 0.0
    config.model.overrides.attention_probs_dropout_prob = 0.0
    workdir = str(base / f"devices{devices}")
    summary = train.train_and_evaluate(config, workdir)
    runs[devices] = workdir, summary, {s: _losses(workdir, s) for s in _STAGES}
  return runs


def test_tiny_end_to_end_on_8_devices(ltp_glue_dir, ltp_runs):
  assert jax.device_count() == 8
  workdir, summary, _ = ltp_runs[8]
  assert summary["devices"] == 8
  assert summary["dev"]["validation"]["accuracy"] == _dev_accuracy(ltp_glue_dir, workdir,
                                                                   20)
  # An epoch is every training example once, in batches of 8 (one bucket: only the
  # last batch is partial).
  config = helpers.tiny_config(ltp_glue_dir)
  train_examples = len(batching.load_split(config, _tokenizer(config), "train", None))
  assert train_examples == 60
  for stage in _STAGES:
    assert summary["stages"][stage]["steps"] == -(-train_examples // 8), stage
  assert summary["steps"] == sum(s["steps"] for s in summary["stages"].values())
  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk["task"] == "sst2" and on_disk["method"] == "ltp"
  assert os.listdir(os.path.join(workdir, "finetune", "tensorboard"))
  assert os.listdir(os.path.join(workdir, "finetune", "best"))


def test_ltp_stages_hand_over_and_flops_are_recounted(ltp_glue_dir, ltp_runs):
  """LTP's three stages on one device: what each stage learns, freezes and hands over,
  and the dev FLOPs recounted by hand from the tokens the compaction engine keeps."""
  workdir, summary, _ = ltp_runs[1]
  stages = summary["stages"]
  assert list(stages) == list(_STAGES) and summary["method"] == "ltp"
  initial = np.asarray(ltp.threshold_schedule(0.06, 4))
  soft = np.array(stages["soft"]["pruning"]["thresholds"])
  hard = np.array(stages["hard"]["pruning"]["thresholds"])
  assert soft[0] == 0.0, "layer 0 must never prune"
  assert np.abs(soft - initial)[1:].min() > 1e-4, "thresholds should learn in the soft stage"
  np.testing.assert_array_equal(hard, soft)  # frozen in the hard stage
  dev = summary["dev"]["validation"]
  kept = np.array(dev["tokens_kept_per_layer"])
  assert len(kept) == 4 and kept[0] == 1.0
  # Really pruned: 30-70% kept mid-model, a fraction that differs per example.
  print(f"kept per layer {kept}, relative FLOPs {dev['relative_flops']:.3f}, soft "
        f"thresholds moved by at least {np.abs(soft - initial)[1:].min():.2e}")
  assert 0.3 <= kept[2] <= 0.7 and dev["relative_flops"] < 0.95, dev
  with open(os.path.join(ltp_glue_dir, "SST-2", "dev.tsv"), "rb") as f:
    texts = [line.rsplit(b"\t", 1)[0] for line in f.read().splitlines()[1:]]
  records = predict.Predictor(loading.load_run(workdir), 8).predict_lines(texts, 1)
  n = np.array([r["tokens"] for r in records], np.float64)
  after = np.array([r["kept_per_layer"] for r in records], np.float64)
  assert len(set(after[:, 2] / n)) > 1, "examples should keep different fractions"
  d, d_ff = 32, 64  # configs/tiny.py

  def macs(attn, ffn):  # per layer: attention and QKV/output on the tokens entering
    return (2 * d * attn**2 + 4 * d**2 * attn + 2 * d * d_ff * ffn).sum()

  entering = np.concatenate([n[:, None], after[:, :-1]], 1)
  full = np.repeat(n[:, None], 4, axis=1)
  assert dev["relative_flops"] == pytest.approx(macs(entering, after) / macs(full, full),
                                                rel=1e-9)
  np.testing.assert_array_equal(kept, (after.mean(0) / n.mean()).round(4))
  # The hard stage hands over a checkpoint within the FLOPs the soft stage reached.
  soft_flops = stages["soft"]["dev"]["validation"]["relative_flops"]
  assert stages["hard"]["start_relative_flops"] == soft_flops
  assert stages["hard"]["flops_budget"] == pytest.approx(soft_flops + 0.005)
  assert dev["relative_flops"] <= soft_flops + 0.005
  assert stages["hard"]["flops_drift"] == pytest.approx(dev["relative_flops"] - soft_flops)
  # config.json records the variant's resolved choices, not None.
  assert summary["config"]["pruning"]["reg_norm"] == "live"
  assert summary["config"]["stage_settings"]["soft"]["clip_mode"] == "per_group"


def test_8_devices_equal_1_device(ltp_runs):
  """Fine-tuning and LTP's soft and hard stages: losses and dev metrics per stage."""
  (_, one_summary, one), (_, eight_summary, eight) = ltp_runs[1], ltp_runs[8]
  for stage in _STAGES:
    steps = one_summary["stages"][stage]["steps"]
    assert sorted(one[stage]) == sorted(eight[stage]) == list(range(1, steps + 1)), stage
    diff = max(abs(one[stage][s] - eight[stage][s]) for s in one[stage])
    print(f"{stage}: max per-step loss difference, 8 vs 1 devices: {diff:.2e}")
    assert diff <= 1e-5
    assert len(set(round(v, 4) for v in one[stage].values())) > 1, "loss should change"
    dev_one = one_summary["stages"][stage]["dev"]["validation"]
    dev_eight = eight_summary["stages"][stage]["dev"]["validation"]
    assert dev_one.keys() == dev_eight.keys()
    for key, value in dev_one.items():
      np.testing.assert_allclose(dev_eight[key], value, atol=1e-6, err_msg=f"{stage} {key}")
  assert one_summary["dev"]["validation"]["relative_flops"] < 1.0, "LTP should prune"


def test_interrupted_then_resumed_equals_uninterrupted(glue_dir, tmp_path, monkeypatch):
  def config():
    c = helpers.tiny_config(glue_dir, log_every_steps=1, checkpoint_every_steps=100)
    c.num_devices = 2
    c.stage_settings.finetune.num_epochs = 2
    return c

  full = train.train_and_evaluate(config(), str(tmp_path / "full"))

  monkeypatch.setattr(train, "_StopRequest", lambda: helpers.StopAfter(13))
  with pytest.raises(train.Interrupted, match="step 13"):
    train.train_and_evaluate(config(), str(tmp_path / "cut"))
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config(), str(tmp_path / "cut"))

  full_losses, cut_losses = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
  assert max(full_losses) == full["steps"] == resumed["steps"] > 13
  for step, loss in full_losses.items():
    assert cut_losses[step] == pytest.approx(loss, abs=1e-6), step
  assert resumed["dev"] == full["dev"]


def test_signal_sets_stop_flag():
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, else the default
  with train._StopRequest() as stop:  # pylint: disable=protected-access
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested
  assert signal.getsignal(signal.SIGINT) is before


def test_unknown_stage_is_rejected(glue_dir, tmp_path):
  config = helpers.tiny_config(glue_dir)
  config.stages = ("finetune", "polish")
  with pytest.raises(ValueError, match="Unknown stage 'polish'"):
    train.train_and_evaluate(config, str(tmp_path))


def test_locked_config_rejects_typos():
  config = helpers.tiny_config("unused")
  with pytest.raises(AttributeError):
    config.train.learning_rat = 1.0


def test_selection_slice_is_seeded_and_disjoint():
  a = batching.selection_indices(1000, 0.1, 0, seed=0)
  assert len(a) == 100 and len(set(a.tolist())) == 100
  np.testing.assert_array_equal(a, batching.selection_indices(1000, 0.1, 0, seed=0))
  assert set(a.tolist()) != set(batching.selection_indices(1000, 0.1, 0, seed=1).tolist())
  assert len(batching.selection_indices(1000, 0.1, 30, seed=0)) == 30  # capped
  assert len(batching.selection_indices(1000, 0.0, 0, seed=0)) == 0


def test_checkpoints_are_selected_on_a_held_out_training_slice(glue_dir, tmp_path,
                                                                monkeypatch):
  config = helpers.tiny_config(glue_dir, max_steps=6, eval_every_steps=2)
  config.stage_settings.finetune.eval_every_steps = 3  # the stage's cadence wins
  config.num_devices = 1
  config.data.buckets = (32,)  # what is trained and judged on does not depend on it
  config.data.per_device_batch_size = 4
  config.data.selection_fraction = 0.25
  config.data.selection_seed = 5
  everything = batching.load_split(config, _tokenizer(config), "train", None)
  trained_on, evaluated = [], []
  real_batches, real_evaluate = batching.train_batches, train.evaluate

  def spy_batches(data, *args, **kwargs):
    trained_on.append(data)
    return real_batches(data, *args, **kwargs)

  def spy_evaluate(*args, **kwargs):
    evaluated.append(kwargs["where"].rsplit(", ", 1)[-1])
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(batching, "train_batches", spy_batches)
  monkeypatch.setattr(train, "evaluate", spy_evaluate)
  summary = train.train_and_evaluate(config, str(tmp_path))

  held = batching.selection_indices(len(everything), 0.25, 2000, seed=5)
  assert len(held) == 16
  keep = np.setdiff1d(np.arange(len(everything)), held)
  as_rows = lambda data: sorted(tuple(x.tolist()) for x in data.ids)
  assert trained_on and all(as_rows(d) == as_rows(batching.subset(everything, keep))
                            for d in trained_on)
  # checkpoints judged on the slice at steps 3 and 6; dev once, at the handover
  assert evaluated == ["selection", "selection", "validation", "selection"]
  with open(tmp_path / "finetune" / "metrics.jsonl") as f:
    splits = {json.loads(line)["split"] for line in f}
  assert "eval_selection" in splits and "eval_validation" not in splits
  record = summary["selection"]
  assert (record["split"], record["fraction"], record["seed"], record["examples"],
          record["train_examples"]) == ("selection", 0.25, 5, 16, 48)
  stage = summary["stages"]["finetune"]
  assert stage["selection_split"] == "selection"
  assert record["metrics"] == stage["selection"]
  assert summary["dev"]["validation"]["accuracy"] == _dev_accuracy(glue_dir, tmp_path)
