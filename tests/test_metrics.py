"""Tests for tpjax.data.metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from tpjax.data import metrics
from tpjax.data import glue

# A binary example used throughout (label 1 is positive):
#   labels      1 1 1 0 0 0 0 1
#   predictions 1 1 0 0 0 1 0 1
# TP = 3 (idx 0, 1, 7), FN = 1 (idx 2), FP = 1 (idx 5), TN = 3 (idx 3, 4, 6).
_LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 1])
_PREDS = np.array([1, 1, 0, 0, 0, 1, 0, 1])


def test_accuracy():
  # 6 of 8 right (TP + TN).
  assert metrics.accuracy(_PREDS, _LABELS) == pytest.approx(6 / 8)
  assert metrics.accuracy([2, 1, 0], [2, 1, 0]) == 1.0


def test_f1_binary_positive_class():
  # precision = 3 / 4, recall = 3 / 4, F1 = 2 TP / (2 TP + FP + FN) = 6 / 8.
  assert metrics.f1(_PREDS, _LABELS) == pytest.approx(0.75)
  # TP = 1, FP = 2, FN = 0: F1 = 2 / (2 + 2 + 0) = 0.5.
  assert metrics.f1([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
  # Only class 1 counts as positive: all-0 predictions of all-0 labels have
  # no TP, FP or FN, so F1 is defined as 0.
  assert metrics.f1([0, 0], [0, 0]) == 0.0
  # Predicting 0 everywhere on positives: TP = 0, FN = 2 -> 0.
  assert metrics.f1([0, 0], [1, 1]) == 0.0


def test_matthews_from_confusion_matrix():
  # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
  #     = (3*3 - 1*1) / sqrt(4 * 4 * 4 * 4) = 8 / 16 = 0.5.
  assert metrics.matthews(_PREDS, _LABELS) == pytest.approx(0.5)
  # TP = 2, TN = 1, FP = 2, FN = 0:
  # (2*1 - 2*0) / sqrt(4 * 2 * 3 * 1) = 2 / sqrt(24).
  preds = [1, 1, 1, 1, 0]
  labels = [1, 1, 0, 0, 0]
  assert metrics.matthews(preds, labels) == pytest.approx(2 / math.sqrt(24))
  # Perfectly wrong is -1.
  assert metrics.matthews([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_matthews_zero_denominator():
  # A constant predictor makes (TP+FP)(TN+FN) = 0: defined as 0.0, not NaN.
  assert metrics.matthews([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0
  assert metrics.matthews([0, 0, 0], [0, 0, 0]) == 0.0
  assert metrics.matthews([0, 1, 0], [1, 1, 1]) == 0.0


def test_matthews_multiclass():
  # Confusion (rows true, cols pred) for labels [0,0,1,1,2,2] and
  # predictions [0,1,1,1,2,0]: [[1,1,0],[0,2,0],[1,0,1]].
  # c = 4 correct, s = 6, t = [2,2,2], p = [2,3,1].
  # (c s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t))
  #   = (24 - 12) / sqrt((36 - 14)(36 - 12)) = 12 / sqrt(528).
  got = metrics.matthews([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
  assert got == pytest.approx(12 / math.sqrt(528))


def test_pearson_by_hand():
  # x = [1, 2, 3], y = [1, 3, 2]: centred x = [-1, 0, 1], y = [-1, 1, 0].
  # r = sum(xy) / sqrt(sum(x^2) sum(y^2)) = 1 / sqrt(2 * 2) = 0.5.
  assert metrics.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(
      0.5)
  # An affine map of the labels correlates perfectly.
  labels = np.array([0.0, 1.5, 2.0, 4.75, 5.0])
  assert metrics.pearson(2 * labels + 1, labels) == pytest.approx(1.0)


def test_spearman_by_hand():
  # Ranks of [10, 20, 30, 40] are [1,2,3,4]; of [1, 3, 2, 4] are [1,3,2,4].
  # d = [0, -1, 1, 0], rho = 1 - 6 sum(d^2) / (n (n^2 - 1)) = 1 - 12/60 = 0.8.
  got = metrics.spearman([10.0, 20.0, 30.0, 40.0], [1.0, 3.0, 2.0, 4.0])
  assert got == pytest.approx(0.8)
  # Monotone but non-linear: rank correlation is exactly 1.
  assert metrics.spearman([1.0, 4.0, 9.0, 100.0],
                          [1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)


def test_spearman_ties_use_average_ranks():
  # x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y = [1, 2, 3, 4].
  # Centred ranks x = [-1.5, 0, 0, 1.5], y = [-1.5, -.5, .5, 1.5]:
  # sum(xy) = 4.5, sum(x^2) = 4.5, sum(y^2) = 5 -> 4.5 / sqrt(22.5).
  got = metrics.spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
  assert got == pytest.approx(4.5 / math.sqrt(22.5))


def test_correlation_of_constant_is_zero():
  assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
  assert metrics.spearman([1.0, 2.0, 3.0], [0.1, 0.1, 0.1]) == 0.0


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli", "wnli", "mnli"])
def test_glue_metrics_accuracy_tasks(task):
  got = metrics.glue_metrics(task, _PREDS, _LABELS)
  assert set(got) == {"accuracy"}
  assert got["accuracy"] == pytest.approx(0.75)
  assert isinstance(got["accuracy"], float)


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_glue_metrics_f1_tasks(task):
  got = metrics.glue_metrics(task, _PREDS, _LABELS)
  # accuracy 6/8, F1 6/8, mean 0.75.
  assert got == pytest.approx({"accuracy": 0.75, "f1": 0.75,
                               "accuracy_and_f1": 0.75})
  # labels [1,0,0,0,1], preds [1,1,0,0,0]: TP 1, FP 1, FN 1, TN 2.
  # accuracy 3/5 = 0.6, F1 = 2 / (2 + 1 + 1) = 0.5, mean 0.55.
  got = metrics.glue_metrics(task, np.array([1, 1, 0, 0, 0]),
                             np.array([1, 0, 0, 0, 1]))
  assert got == pytest.approx({"accuracy": 0.6, "f1": 0.5,
                               "accuracy_and_f1": 0.55})


def test_glue_metrics_cola():
  got = metrics.glue_metrics("cola", _PREDS, _LABELS)
  assert got == pytest.approx({"matthews": 0.5, "accuracy": 0.75})


def test_glue_metrics_stsb():
  preds = np.array([1.0, 2.0, 3.0], np.float32)
  labels = np.array([1.0, 3.0, 2.0], np.float32)
  # Pearson 0.5 (see test_pearson_by_hand). Ranks equal the values here,
  # so Spearman is also 0.5; their mean is 0.5.
  got = metrics.glue_metrics("stsb", preds, labels)
  assert got == pytest.approx({"pearson": 0.5, "spearman": 0.5,
                               "pearson_and_spearman": 0.5})
  # A regression head's [n, 1] output is accepted.
  got = metrics.glue_metrics("stsb", preds[:, None], labels)
  assert got["pearson"] == pytest.approx(0.5)


def test_weights_drop_padded_entries():
  # Padding rows are all wrong; with weight 0 they must not count.
  preds = np.concatenate([_PREDS, [1, 1, 1]])
  labels = np.concatenate([_LABELS, [0, 0, 0]])
  weights = np.array([1] * 8 + [0] * 3)
  got = metrics.glue_metrics("cola", preds, labels, weights)
  assert got == pytest.approx({"matthews": 0.5, "accuracy": 0.75})
  # Without the weights the padding would hurt: 6 of 11 right.
  assert metrics.glue_metrics("sst2", preds, labels)["accuracy"] == (
      pytest.approx(6 / 11))
  got = metrics.glue_metrics("mrpc", preds, labels, weights.astype(bool))
  assert got["f1"] == pytest.approx(0.75)
  # Padding in the middle, float weights as an eval loop would produce.
  preds = np.array([1.0, 9.0, 2.0, -4.0, 3.0], np.float32)
  labels = np.array([1.0, 0.0, 3.0, 7.0, 2.0], np.float32)
  weights = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
  got = metrics.glue_metrics("stsb", preds, labels, weights)
  assert got["pearson"] == pytest.approx(0.5)


def test_task_metric_is_reported():
  # The checkpoint-selection metric of every task is one glue_metrics gives.
  for name, info in glue.TASKS.items():
    if info.num_labels == 1:
      preds, labels = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    else:
      preds, labels = _PREDS, _LABELS
    assert info.metric in metrics.glue_metrics(name, preds, labels)


def test_glue_metrics_errors():
  with pytest.raises(ValueError, match="Unknown GLUE task"):
    metrics.glue_metrics("sts", _PREDS, _LABELS)
  with pytest.raises(ValueError, match="shape"):
    metrics.glue_metrics("sst2", _PREDS[:3], _LABELS)
  with pytest.raises(ValueError, match="shape"):
    metrics.glue_metrics("sst2", _PREDS, _LABELS, np.ones(3))
  with pytest.raises(ValueError, match="0"):
    metrics.glue_metrics("sst2", _PREDS, _LABELS, np.full(8, 0.5))
  with pytest.raises(ValueError, match="zero examples"):
    metrics.glue_metrics("sst2", _PREDS, _LABELS, np.zeros(8))
  # Logits instead of argmax ids are a caller bug.
  with pytest.raises(ValueError, match="1-D"):
    metrics.accuracy(np.zeros((8, 2)), np.zeros((8, 2)))
