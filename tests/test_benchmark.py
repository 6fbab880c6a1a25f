"""tpjax.benchmark: flag validation, the same batches for every system, paired ratios,
and a peer driven in its own process. (No timing is asserted: timings are benchmarks.)"""

import numpy as np
import pytest

from tests import helpers
from tpjax.inference import benchmark
from tpjax.inference import peers


@pytest.mark.parametrize("kwargs, message", [
    (dict(systems=["pruned", "tensorrt"]), "Unknown or no systems"),
    (dict(systems=[]), "Unknown or no systems"),
    (dict(rounds=0), "--rounds must be at least 1"),
    (dict(batch_size=0), "--batch_size must be at least 1"),
    (dict(orders=["random"]), "Unknown or no batch orders"),
    (dict(workdir="/nonexistent/run"), "is not a directory"),
])
def test_validate_rejects_bad_flags(tmp_path, kwargs, message):
  args = dict(workdir=str(tmp_path), systems=["pruned"], rounds=10, batch_size=32,
              latency_examples=10, orders=["sorted"])
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    benchmark.validate(**args)


def test_cli_user_error_is_one_paragraph_and_writes_nothing(tmp_path):
  # Refused before any work, so in this process (the exit code of a real process is
  # test_main's and test_faults' to check).
  out = tmp_path / "result.json"
  code, _, stderr = helpers.run_cli("tpjax.benchmark", f"--workdir={tmp_path}",
                                    "--systems=pruned,nope", f"--out={out}")
  assert code == 2, stderr
  assert "Traceback" not in stderr
  assert "tpjax.benchmark: error: Unknown or no systems ['nope']" in " ".join(
      stderr.split())
  assert not out.exists()


def test_batches_are_the_same_examples_in_the_same_order():
  lengths = np.array([5, 3, 9, 3, 7, 1, 2])
  sorted_groups = benchmark.batch_indices(lengths, 3, "sorted")
  assert [g.tolist() for g in sorted_groups] == [[5, 6, 1], [3, 0, 4], [2]]
  dataset = benchmark.batch_indices(lengths, 3, "dataset")
  assert [g.tolist() for g in dataset] == [[0, 1, 2], [3, 4, 5], [6]]


def test_ratios_are_paired_per_round():
  # Round 2 is slow for both systems: per-round ratios stay at 2.
  ratio = benchmark._paired([2.0, 20.0, 4.0], [1.0, 10.0, 2.0])  # pylint: disable=protected-access
  assert ratio["median"] == ratio["q25"] == ratio["q75"] == 2.0


# float32 peers match exactly; bf16 and int8 ones within their rounding.
_PEER_TOLERANCE = {"hf_pytorch": 1e-6, "hf_pytorch_bf16": 0.05, "onnxruntime_int8": 0.05}


@pytest.mark.parametrize("system", sorted(_PEER_TOLERANCE))
def test_peer_in_its_own_process(tmp_path, system):
  """The peer protocol end to end, on a tiny random BERT, at each peer's precision."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  if system.startswith("onnx"):
    pytest.importorskip("onnxruntime")
  config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32,
                                   num_labels=2)
  torch.manual_seed(0)
  model = transformers.BertForSequenceClassification(config).eval()
  model.save_pretrained(tmp_path)
  batch = {"input_ids": np.array([[2, 7, 9, 3]]), "attention_mask": np.ones((1, 4), int),
           "token_type_ids": np.zeros((1, 4), int)}
  path = str(tmp_path / "batches.npz")
  np.savez(path, **{f"{order}/0/{k}": v for order in ("sorted", "latency")
                    for k, v in batch.items()})
  assert peers.load_batches(path)["sorted"][0]["input_ids"].tolist() == [[2, 7, 9, 3]]
  peer = benchmark.Peer(system, str(tmp_path), path, threads=1)
  try:
    assert peer.ask(cmd="throughput", order="sorted")["seconds"] > 0
    assert len(peer.ask(cmd="latency")["seconds"]) == 1
    logits = np.asarray(peer.ask(cmd="logits", order="sorted", batch=0)["logits"])
    every = np.asarray(peer.ask(cmd="all_logits", order="sorted")["logits"])
  finally:
    peer.close()
  np.testing.assert_array_equal(every[0], logits)
  with torch.inference_mode():
    expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  diff = np.abs(logits - expected).max()
  print(f"{system}: max |logit - float32 reference| {diff:.2e}")
  assert diff <= _PEER_TOLERANCE[system]


def test_keep_agreement_counts_real_token_layers_only():
  a = np.zeros((2, 2, 4), bool)  # [layers, examples, seq]
  b = a.copy()
  b[:, :, 3] = True              # disagree only past example 0's length ...
  b[1, 1, 0] = True              # ... and at one real token-layer of example 1
  lengths = np.array([3, 4])
  # 2 layers x 7 real tokens = 14 pairs; example 1's slot 3 disagrees on 2 layers,
  # and (layer 1, example 1, slot 0) once more.
  assert benchmark.keep_agreement(a, b, lengths) == pytest.approx(11 / 14)


def test_pruned_is_compared_with_the_faster_unpruned_path_of_each_round():
  # Round 1: the plain forward is faster; round 2: the packed one (coarse buckets).
  seconds = {"pruned": [1.0, 1.0], "unpruned": [1.2, 3.0], "keep_all": [1.5, 1.4]}
  r = benchmark.best_unpruned_ratios(seconds, reduction=2.0)
  assert r["speedup_pruned_vs_best_unpruned"]["min"] == 1.2
  assert r["speedup_pruned_vs_best_unpruned"]["max"] == 1.4
  assert r["speedup_over_flops_reduction_best_unpruned"]["median"] == pytest.approx(0.65)
