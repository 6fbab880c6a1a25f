"""GLUE evaluation metrics in plain numpy/scipy.

Each metric takes 1-D predictions and labels of equal length. For
classification, predictions are class ids (the argmax of the logits); for
STS-B they are float scores. `glue_metrics` picks the metrics of a task and
drops padded examples by weight.
"""

import numpy as np
from scipy import stats


def _as_pair(predictions, labels) -> tuple:
  """Checks and flattens a predictions/labels pair."""
  predictions = np.asarray(predictions)
  labels = np.asarray(labels)
  if predictions.ndim != 1 or labels.ndim != 1:
    raise ValueError("Expected 1-D predictions and labels, got shapes "
                     f"{predictions.shape} and {labels.shape}.")
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions have shape {predictions.shape} but labels "
                     f"have shape {labels.shape}.")
  if predictions.size == 0:
    raise ValueError("Cannot compute a metric over zero examples.")
  return predictions, labels


def accuracy(predictions, labels) -> float:
  """Fraction of predictions equal to the label.

  Args:
    predictions: [n] predicted class ids.
    labels: [n] true class ids.

  Returns:
    Accuracy in [0, 1].
  """
  predictions, labels = _as_pair(predictions, labels)
  return float(np.mean(predictions == labels))


def f1(predictions, labels) -> float:
  """Binary F1 of the positive class 1 (official for MRPC and QQP).

  Args:
    predictions: [n] predicted class ids (0/1).
    labels: [n] true class ids (0/1).

  Returns:
    2 TP / (2 TP + FP + FN); 0.0 when there are no positive predictions and
    no positive labels.
  """
  predictions, labels = _as_pair(predictions, labels)
  pred_pos = predictions == 1
  true_pos = labels == 1
  tp = np.sum(pred_pos & true_pos)
  fp = np.sum(pred_pos & ~true_pos)
  fn = np.sum(~pred_pos & true_pos)
  denominator = 2 * tp + fp + fn
  if denominator == 0:
    return 0.0
  return float(2 * tp / denominator)


def matthews(predictions, labels) -> float:
  """Matthews correlation coefficient (official for CoLA).

  Uses the multiclass form, which equals the usual binary formula
  (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for two classes.

  Args:
    predictions: [n] predicted class ids.
    labels: [n] true class ids.

  Returns:
    MCC in [-1, 1]; 0.0 when the denominator is 0 (e.g. a constant
    predictor).
  """
  predictions, labels = _as_pair(predictions, labels)
  classes, ids = np.unique(np.concatenate([labels, predictions]),
                           return_inverse=True)
  n = labels.size
  k = classes.size
  # float64 keeps s**2 exact enough even for the 400k-example QQP/MNLI.
  confusion = np.zeros((k, k), dtype=np.float64)
  np.add.at(confusion, (ids[:n], ids[n:]), 1.0)
  true_counts = confusion.sum(axis=1)
  pred_counts = confusion.sum(axis=0)
  correct = np.trace(confusion)
  total = float(n)
  numerator = correct * total - np.dot(pred_counts, true_counts)
  denominator = np.sqrt((total**2 - np.dot(pred_counts, pred_counts)) *
                        (total**2 - np.dot(true_counts, true_counts)))
  if denominator == 0:
    return 0.0
  return float(numerator / denominator)


def _correlation(predictions, labels, fn) -> float:
  predictions, labels = _as_pair(predictions, labels)
  if predictions.size < 2:
    raise ValueError("A correlation needs at least 2 examples.")
  predictions = predictions.astype(np.float64)
  labels = labels.astype(np.float64)
  # Undefined for a constant input; 0.0 like MCC rather than a NaN that
  # would break best-checkpoint comparisons.
  if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
    return 0.0
  return float(fn(predictions, labels)[0])


def pearson(predictions, labels) -> float:
  """Pearson correlation (official for STS-B).

  Args:
    predictions: [n] predicted scores.
    labels: [n] true scores.

  Returns:
    Pearson r; 0.0 when either input is constant.
  """
  return _correlation(predictions, labels, stats.pearsonr)


def spearman(predictions, labels) -> float:
  """Spearman rank correlation (ties get average ranks).

  Args:
    predictions: [n] predicted scores.
    labels: [n] true scores.

  Returns:
    Spearman rho; 0.0 when either input is constant.
  """
  return _correlation(predictions, labels, stats.spearmanr)


# Which group of metrics each task reports.
_TASK_GROUPS = {
    "sst2": "accuracy",
    "rte": "accuracy",
    "qnli": "accuracy",
    "wnli": "accuracy",
    "mnli": "accuracy",
    "mrpc": "f1",
    "qqp": "f1",
    "cola": "matthews",
    "stsb": "correlation",
}


def predictions_from_logits(logits: np.ndarray, num_labels: int) -> np.ndarray:
  """[n] predictions from <float32>[n, num_labels] logits: the score for regression
  (num_labels 1), else the argmax class."""
  return logits[:, 0] if num_labels == 1 else np.argmax(logits, axis=-1)


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray,
                 weights: np.ndarray | None = None) -> dict[str, float]:
  """Computes the GLUE metrics of one task.

  Args:
    task: Task name, e.g. 'mrpc'.
    predictions: [n] argmax class ids, or [n] (or [n, 1]) scores for 'stsb'.
    labels: [n] class ids or scores.
    weights: Optional [n] 0/1 mask; weight-0 entries (padding in the last
      eval batch) are dropped before computing anything.

  Returns:
    sst2/rte/qnli/wnli/mnli: {'accuracy'}; mrpc/qqp: {'accuracy', 'f1',
    'accuracy_and_f1'}; cola: {'matthews', 'accuracy'}; stsb: {'pearson',
    'spearman', 'pearson_and_spearman'}.

  Raises:
    ValueError: Unknown task, mismatched shapes, weights that are not 0/1,
      or no examples left after dropping padding.
  """
  if task not in _TASK_GROUPS:
    raise ValueError(f"Unknown GLUE task {task!r}; known tasks: "
                     f"{', '.join(sorted(_TASK_GROUPS))}.")
  group = _TASK_GROUPS[task]
  predictions = np.asarray(predictions)
  labels = np.asarray(labels)
  # A regression head's [n, 1] output is a common shape for STS-B.
  if group == "correlation" and predictions.ndim == 2 and (
      predictions.shape[1] == 1):
    predictions = predictions[:, 0]
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions have shape {predictions.shape} but labels "
                     f"have shape {labels.shape}.")
  if weights is not None:
    weights = np.asarray(weights)
    if weights.shape != labels.shape:
      raise ValueError(f"weights have shape {weights.shape} but labels have "
                       f"shape {labels.shape}.")
    # Fractional weights would be silently treated as 1 below.
    if not np.all((weights == 0) | (weights == 1)):
      raise ValueError("weights must be 0 (padding) or 1 (real example).")
    keep = weights == 1
    predictions = predictions[keep]
    labels = labels[keep]

  if group == "correlation":
    p = pearson(predictions, labels)
    s = spearman(predictions, labels)
    return {"pearson": p, "spearman": s, "pearson_and_spearman": (p + s) / 2}
  acc = accuracy(predictions, labels)
  if group == "f1":
    f = f1(predictions, labels)
    return {"accuracy": acc, "f1": f, "accuracy_and_f1": (acc + f) / 2}
  if group == "matthews":
    return {"matthews": matthews(predictions, labels), "accuracy": acc}
  return {"accuracy": acc}
