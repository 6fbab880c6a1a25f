"""GLUE examples from download_glue_data.py TSV folders or from TFDS.

Two sources give the same `Examples`:

* TSV: a folder laid out by download_glue_data.py (`SST-2/train.tsv`,
  `MRPC/dev.tsv`, ...). Needs nothing beyond the standard library and numpy.
* TFDS: `tfds.load('glue/<task>')`, which needs tensorflow installed. It is
  imported lazily so that the TSV path works without it.

Split names are TFDS-style everywhere: 'train', 'validation', and for MNLI
'validation_matched' / 'validation_mismatched'. String labels are mapped to
the TFDS label ids so that both sources agree.
"""

import csv
import dataclasses
import io
import math
import os

import numpy as np

# Environment variable naming a download_glue_data.py folder.
GLUE_DIR_ENV = "TPJAX_GLUE_DIR"


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Static description of one GLUE task.

  Attributes:
    name: Short task name, e.g. 'sst2'.
    tsv_dir: Folder name in the download_glue_data.py layout, e.g. 'SST-2'.
    text_keys: TFDS feature names of the one or two text fields.
    num_labels: Number of classes; 1 for the STS-B regression task.
    metric: Dev metric used to select the best checkpoint ('accuracy', 'f1',
      'matthews' or 'pearson').
    eval_splits: Splits evaluated on during training.
  """
  name: str
  tsv_dir: str
  text_keys: tuple
  num_labels: int
  metric: str
  eval_splits: tuple

  @property
  def splits(self) -> tuple:
    """All labelled splits of the task: 'train' then the eval splits."""
    return ("train",) + self.eval_splits

  @property
  def is_regression(self) -> bool:
    return self.num_labels == 1


_VAL = ("validation",)

TASKS = {
    "sst2": TaskInfo("sst2", "SST-2", ("sentence",), 2, "accuracy", _VAL),
    "mrpc": TaskInfo("mrpc", "MRPC", ("sentence1", "sentence2"), 2, "f1",
                     _VAL),
    "rte": TaskInfo("rte", "RTE", ("sentence1", "sentence2"), 2, "accuracy",
                    _VAL),
    "cola": TaskInfo("cola", "CoLA", ("sentence",), 2, "matthews", _VAL),
    "stsb": TaskInfo("stsb", "STS-B", ("sentence1", "sentence2"), 1,
                     "pearson", _VAL),
    "qnli": TaskInfo("qnli", "QNLI", ("question", "sentence"), 2, "accuracy",
                     _VAL),
    "qqp": TaskInfo("qqp", "QQP", ("question1", "question2"), 2, "f1", _VAL),
    # TFDS names the MNLI texts premise/hypothesis (TSV: sentence1/sentence2).
    "mnli": TaskInfo("mnli", "MNLI", ("premise", "hypothesis"), 3, "accuracy",
                     ("validation_matched", "validation_mismatched")),
    "wnli": TaskInfo("wnli", "WNLI", ("sentence1", "sentence2"), 2,
                     "accuracy", _VAL),
}


@dataclasses.dataclass(frozen=True)
class _TsvLayout:
  """Where the texts and the label sit in a task's TSV files.

  Attributes:
    text_columns: Header names of the text columns, or 0-based positions when
      the file has no header.
    label_column: Header name, or 0-based position, of the label column.
    num_columns: Expected row width for headerless files (None: use the
      header's width).
    label_ids: Label string -> TFDS label id, for tasks whose TSV labels are
      words; None when the file already holds the numeric label.
  """
  text_columns: tuple
  label_column: str | int
  num_columns: int | None = None
  label_ids: dict | None = None

  @property
  def has_header(self) -> bool:
    return self.num_columns is None


_ENTAILMENT_2 = {"entailment": 0, "not_entailment": 1}

_TSV_LAYOUTS = {
    "sst2": _TsvLayout(("sentence",), "label"),
    # CoLA train/dev: no header; source, label, original mark, sentence.
    "cola": _TsvLayout((3,), 1, num_columns=4),
    "mrpc": _TsvLayout(("#1 String", "#2 String"), "Quality"),
    "rte": _TsvLayout(("sentence1", "sentence2"), "label", None,
                      _ENTAILMENT_2),
    "qnli": _TsvLayout(("question", "sentence"), "label", None, _ENTAILMENT_2),
    "stsb": _TsvLayout(("sentence1", "sentence2"), "score"),
    "wnli": _TsvLayout(("sentence1", "sentence2"), "label"),
    "qqp": _TsvLayout(("question1", "question2"), "is_duplicate"),
    "mnli": _TsvLayout(("sentence1", "sentence2"), "gold_label", None,
                       {"entailment": 0, "neutral": 1, "contradiction": 2}),
}

_TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}

_HOW_TO_SUPPLY = (
    "set config.data.glue_dir or ${env} to a download_glue_data.py folder (or "
    "put one at ../shared/data/glue beside the checkout), or let TFDS build "
    "glue/{task}, which needs tensorflow-cpu (pip install 'tpjax[tfds]') and "
    "internet access the first time")


class GlueDataError(RuntimeError):
  """No source could supply the GLUE data."""


@dataclasses.dataclass
class Examples:
  """Texts and labels of one split.

  Attributes:
    text_a: First (or only) text of each example.
    text_b: Second text of each example; None for single-sentence tasks.
    labels: <int32>[n] class ids, or <float32>[n] scores for STS-B.
  """
  text_a: list
  text_b: list | None
  labels: np.ndarray

  def __post_init__(self):
    # Misaligned fields would silently pair texts with the wrong labels.
    n = len(self.text_a)
    if self.text_b is not None and len(self.text_b) != n:
      raise ValueError(
          f"text_a has {n} entries but text_b has {len(self.text_b)}.")
    if np.ndim(self.labels) != 1 or len(self.labels) != n:
      raise ValueError(f"text_a has {n} entries but labels has shape "
                       f"{np.shape(self.labels)}.")

  def __len__(self) -> int:
    return len(self.text_a)


def get_task(task: str) -> TaskInfo:
  """Looks up a task by name.

  Args:
    task: Task name, e.g. 'sst2'.

  Returns:
    The task's `TaskInfo`.

  Raises:
    ValueError: If the task is unknown.
  """
  try:
    return TASKS[task]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown GLUE task {task!r}; known tasks: "
                     f"{', '.join(sorted(TASKS))}.") from None


def _check_split(info: TaskInfo, split: str) -> None:
  if split not in info.splits:
    raise ValueError(f"Unknown split {split!r} for GLUE task {info.name!r}; "
                     f"its splits are: {', '.join(info.splits)}.")


def _supply_message(task: str) -> str:
  return _HOW_TO_SUPPLY.format(env=GLUE_DIR_ENV, task=task)


def _checkout_glue_dir() -> str:
  """`../shared/data/glue` beside the checkout that holds this package."""
  checkout = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  return os.path.join(os.path.dirname(checkout), "shared", "data", "glue")


# Folders tried, in order, when neither an argument nor $TPJAX_GLUE_DIR names
# one; tests replace this to hide the machine's own copy.
DEFAULT_GLUE_DIRS = (_checkout_glue_dir(),)


def locate_glue_dir(glue_dir: str | None = None) -> tuple[str | None, str]:
  """Finds the download_glue_data.py folder to read TSVs from, and says why.

  The order is: `glue_dir`, then $TPJAX_GLUE_DIR, then the first existing
  folder of `DEFAULT_GLUE_DIRS` (`../shared/data/glue` beside the checkout).

  Args:
    glue_dir: Explicit folder (e.g. config.data.glue_dir); wins when given.

  Returns:
    (folder or None, origin): origin says where the folder came from
    ('config.data.glue_dir', '$TPJAX_GLUE_DIR' or 'beside the checkout') or,
    with None, what was looked for.

  Raises:
    FileNotFoundError: If an explicitly named folder does not exist; falling
      back to TFDS then would hide a typo behind a download attempt.
  """
  origin = "config.data.glue_dir"
  if not glue_dir:
    glue_dir = os.environ.get(GLUE_DIR_ENV) or None
    origin = f"${GLUE_DIR_ENV}"
  if glue_dir is None:
    for candidate in DEFAULT_GLUE_DIRS:
      if os.path.isdir(candidate):
        return candidate, "beside the checkout"
    tried = "".join(f", no folder at {d}" for d in DEFAULT_GLUE_DIRS)
    return None, f"no config.data.glue_dir, ${GLUE_DIR_ENV} unset{tried}"
  glue_dir = os.path.expanduser(os.fspath(glue_dir))
  if not os.path.isdir(glue_dir):
    raise FileNotFoundError(
        f"GLUE folder {glue_dir!r} (from {origin}) does not exist or is not a "
        "directory.")
  return glue_dir, origin


def find_glue_dir(glue_dir: str | None = None) -> str | None:
  """Returns the folder `locate_glue_dir` finds, or None (then TFDS is used)."""
  return locate_glue_dir(glue_dir)[0]


def describe_source(task: str, glue_dir: str | None = None,
                    source: str = "auto") -> str:
  """One line saying where `load_examples` will read `task` from.

  Args:
    task: Task name, e.g. 'sst2'.
    glue_dir: As for `load_examples`.
    source: As for `load_examples`.

  Returns:
    E.g. "GLUE sst2 from TSV folder /data/glue ($TPJAX_GLUE_DIR)".

  Raises:
    FileNotFoundError: As `locate_glue_dir`.
  """
  if source == "tfds":
    return f"GLUE {task} from TFDS glue/{task} (source='tfds')"
  found, origin = locate_glue_dir(glue_dir)
  if found is not None:
    return f"GLUE {task} from TSV folder {found} ({origin})"
  return f"GLUE {task} from TFDS glue/{task} ({origin})"


def tsv_path(task: str, split: str, glue_dir: str) -> str:
  """Returns the TSV file that holds `split` of `task` under `glue_dir`.

  Args:
    task: Task name.
    split: TFDS-style split name.
    glue_dir: download_glue_data.py folder.

  Returns:
    Path of the TSV file (not checked for existence).
  """
  info = get_task(task)
  _check_split(info, split)
  return os.path.join(glue_dir, info.tsv_dir, _TSV_FILES[split])


def _parse_label(raw: str, info: TaskInfo, layout: _TsvLayout):
  """Turns a label field into a class id or a score; ValueError if bad."""
  if layout.label_ids is not None:
    if raw not in layout.label_ids:
      raise ValueError(f"label {raw!r} is not one of "
                       f"{', '.join(layout.label_ids)}")
    return layout.label_ids[raw]
  if info.is_regression:
    value = float(raw)
    if not math.isfinite(value):
      raise ValueError(f"score {raw!r} is not a finite number")
    return value
  value = int(raw)
  if not 0 <= value < info.num_labels:
    raise ValueError(
        f"label {value} is outside [0, {info.num_labels - 1}]")
  return value


def _column_indices(header: list, layout: _TsvLayout, path: str) -> tuple:
  """Maps the layout's column names to positions in `header`."""
  wanted = layout.text_columns + (layout.label_column,)
  missing = [name for name in wanted if name not in header]
  if missing:
    raise ValueError(
        f"{path}:1: header {header!r} lacks column(s) {missing!r}.")
  text_idx = tuple(header.index(name) for name in layout.text_columns)
  return text_idx, header.index(layout.label_column)


def _read_rows(path: str, task: str):
  """Yields (line_number, fields) for each line of a TSV file.

  Args:
    path: File to read.
    task: Task name, for error messages.

  Yields:
    1-based line number and the list of tab-separated fields; blank lines at the
    end of the file are skipped (editors leave them).

  Raises:
    FileNotFoundError: If `path` does not exist.
    ValueError: If the file is not valid UTF-8 (the message names the line and the
      byte offset), or has a blank line before its end.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"GLUE {task} file not found: {path!r}. Point the GLUE folder at a "
        "download_glue_data.py output.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    # utf-8-sig drops MRPC's byte-order mark.
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    line = raw.count(b"\n", 0, err.start) + 1
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1)
    raise ValueError(f"{path}:{line}: not valid UTF-8: byte 0x{raw[err.start]:02x} at "
                     f"byte offset {err.start} of the file (byte {column} of the line). "
                     "Save the file as UTF-8.") from None
  # Quotes are ordinary characters in GLUE TSVs (e.g. `he said "hi`); newline=''
  # semantics as the csv docs say.
  reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                      quoting=csv.QUOTE_NONE)
  blank = None  # first line of a run of blank lines, reported only if text follows
  for fields in reader:
    if not any(field.strip() for field in fields):
      blank = blank or reader.line_num
      continue
    if blank is not None:
      raise ValueError(f"{path}:{blank}: blank line (no tab-separated columns) before "
                       "the end of the file; only blank lines at the end are ignored.")
    yield reader.line_num, fields


def load_tsv(task: str, split: str, glue_dir: str) -> Examples:
  """Reads one split of a task from a download_glue_data.py folder.

  Every row must parse: a row with the wrong number of columns or a bad label
  is an error rather than being skipped, so no example is lost silently.

  Args:
    task: Task name, e.g. 'mrpc'.
    split: TFDS-style split name, e.g. 'validation'.
    glue_dir: download_glue_data.py folder (holding SST-2/, MRPC/, ...).

  Returns:
    The split's `Examples`, in file order.

  Raises:
    ValueError: Unknown task or split, or a malformed file (the message names
      the file and the 1-based line number).
    FileNotFoundError: If the TSV file does not exist.
  """
  info = get_task(task)
  path = tsv_path(task, split, glue_dir)
  layout = _TSV_LAYOUTS[task]
  rows = _read_rows(path, task)

  if layout.has_header:
    first = next(rows, None)
    if first is None:
      raise ValueError(f"{path}: empty file, expected a header line.")
    header = first[1]
    num_columns = len(header)
    text_idx, label_idx = _column_indices(header, layout, path)
  else:
    num_columns = layout.num_columns
    text_idx, label_idx = layout.text_columns, layout.label_column

  texts = [[] for _ in text_idx]
  labels = []
  for line, fields in rows:
    if len(fields) != num_columns:
      raise ValueError(f"{path}:{line}: expected {num_columns} tab-separated "
                       f"columns, got {len(fields)}: {fields!r}")
    try:
      labels.append(_parse_label(fields[label_idx], info, layout))
    except ValueError as err:
      raise ValueError(f"{path}:{line}: bad label: {err}") from err
    for column, idx in zip(texts, text_idx):
      column.append(fields[idx])

  if not labels:
    # A GLUE split is never empty; an empty file is a truncated download.
    raise ValueError(f"{path}: no examples in file.")
  dtype = np.float32 if info.is_regression else np.int32
  return Examples(text_a=texts[0],
                  text_b=texts[1] if len(texts) > 1 else None,
                  labels=np.asarray(labels, dtype=dtype))


def _decode(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_tfds(task: str, split: str, data_dir: str | None = None) -> Examples:
  """Reads one split of a task with TensorFlow Datasets.

  Args:
    task: Task name, e.g. 'sst2'.
    split: TFDS split name, e.g. 'validation'.
    data_dir: TFDS data folder; None for the TFDS default.

  Returns:
    The split's `Examples`.

  Raises:
    ValueError: Unknown task or split.
    GlueDataError: If TFDS cannot be imported or cannot load the dataset; the
      message names both ways to supply the data.
  """
  info = get_task(task)
  _check_split(info, split)
  try:
    # Lazy: tensorflow is an optional dependency used only by this path.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = tfds.load(f"glue/{task}", split=split, data_dir=data_dir)
    rows = tfds.as_numpy(ds)
  except Exception as err:  # pylint: disable=broad-except
    raise GlueDataError(
        f"Could not load GLUE {task} ({split}) from TFDS "
        f"({type(err).__name__}: {err}). To supply the data, "
        f"{_supply_message(task)}.") from err

  texts = [[] for _ in info.text_keys]
  labels = []
  for row in rows:
    for column, key in zip(texts, info.text_keys):
      column.append(_decode(row[key]))
    labels.append(row["label"])
  dtype = np.float32 if info.is_regression else np.int32
  return Examples(text_a=texts[0],
                  text_b=texts[1] if len(texts) > 1 else None,
                  labels=np.asarray(labels, dtype=dtype))


def load_examples(task: str, split: str, glue_dir: str | None = None,
                  source: str = "auto") -> Examples:
  """Reads one split of a task from TSVs or TFDS.

  Args:
    task: Task name, e.g. 'rte'.
    split: TFDS-style split name.
    glue_dir: download_glue_data.py folder; falls back to $TPJAX_GLUE_DIR,
      then to ../shared/data/glue beside the checkout (`locate_glue_dir`).
    source: 'auto' (TSV when a GLUE folder is found, else TFDS), 'tsv' or
      'tfds'.

  Returns:
    The split's `Examples`.

  Raises:
    ValueError: Unknown task, split or source, or a malformed TSV file.
    FileNotFoundError: A GLUE folder or TSV file that does not exist.
    GlueDataError: No source could supply the data.
  """
  info = get_task(task)
  _check_split(info, split)
  if source not in ("auto", "tsv", "tfds"):
    raise ValueError(
        f"Unknown GLUE source {source!r}; use 'auto', 'tsv' or 'tfds'.")
  if source == "tfds":
    return load_tfds(task, split)
  found = find_glue_dir(glue_dir)
  if found is not None:
    return load_tsv(task, split, found)
  if source == "tsv":
    raise GlueDataError(
        f"source='tsv' needs a GLUE folder but none is set. To supply the "
        f"data, {_supply_message(task)}.")
  return load_tfds(task, split)
