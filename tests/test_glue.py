"""Tests for tpjax.data.glue: TSV layouts, errors, TFDS path, real files."""

import os
import re
import sys

import numpy as np
import pytest

from tpjax.data import glue

_T = "\t"


def _write_tsv(glue_dir, task_dir, name, rows, bom=False, final_newline=True):
  """Writes tab-joined `rows` to glue_dir/task_dir/name, byte for byte.

  Args:
    glue_dir: Root folder (a pathlib.Path).
    task_dir: Task folder, e.g. 'SST-2'.
    name: File name, e.g. 'dev.tsv'.
    rows: Lists of fields (joined by tabs) or preformatted line strings.
    bom: Prefix a UTF-8 byte-order mark, as MRPC's files have.
    final_newline: End the file with a newline (CoLA's real dev.tsv does not).

  Returns:
    Path of the written file.
  """
  folder = glue_dir / task_dir
  folder.mkdir(parents=True, exist_ok=True)
  lines = [r if isinstance(r, str) else _T.join(r) for r in rows]
  text = "\n".join(lines) + ("\n" if final_newline else "")
  path = folder / name
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(("\ufeff" if bom else "") + text)
  return path


@pytest.fixture(autouse=True)
def _no_env_glue_dir(monkeypatch):
  # CI sets $TPJAX_GLUE_DIR and these machines keep GLUE beside the checkout;
  # the synthetic tests must see neither.
  monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
  monkeypatch.setattr(glue, "DEFAULT_GLUE_DIRS", ())


# ---------------------------------------------------------------- task table


def test_tasks_table():
  assert set(glue.TASKS) == {"sst2", "mrpc", "rte", "cola", "stsb", "qnli",
                             "qqp", "mnli", "wnli"}
  for name, info in glue.TASKS.items():
    assert info.name == name
    assert info.metric in ("accuracy", "f1", "matthews", "pearson")
    assert len(info.text_keys) in (1, 2)
  assert glue.TASKS["stsb"].num_labels == 1
  assert glue.TASKS["mnli"].num_labels == 3
  assert glue.TASKS["mnli"].eval_splits == ("validation_matched",
                                            "validation_mismatched")
  assert glue.TASKS["sst2"].eval_splits == ("validation",)
  assert glue.TASKS["cola"].metric == "matthews"
  assert glue.TASKS["mrpc"].tsv_dir == "MRPC"


def test_unknown_task_lists_known_tasks(tmp_path):
  with pytest.raises(ValueError, match="sst2.*") as err:
    glue.load_tsv("sst3", "train", str(tmp_path))
  for name in glue.TASKS:
    assert name in str(err.value)
  with pytest.raises(ValueError, match="Unknown GLUE task"):
    glue.load_examples("nope", "train", glue_dir=str(tmp_path))


def test_unknown_split_lists_task_splits(tmp_path):
  with pytest.raises(ValueError) as err:
    glue.load_tsv("mnli", "validation", str(tmp_path))
  msg = str(err.value)
  assert "validation_matched" in msg and "validation_mismatched" in msg
  with pytest.raises(ValueError, match="train, validation"):
    glue.load_examples("sst2", "test", glue_dir=str(tmp_path))
  with pytest.raises(ValueError, match="validation"):
    glue.load_tfds("rte", "dev")


# ------------------------------------------------------------- TSV layouts


def test_sst2_quotes_empty_text_and_spaces_kept(tmp_path):
  _write_tsv(tmp_path, "SST-2", "dev.tsv", [
      ["sentence", "label"],
      ['he said "hi', "1"],
      ["", "0"],                     # Empty text is a valid example.
      ["trailing space . ", "0"],
      ['"fully quoted"', "1"],
  ])
  ex = glue.load_tsv("sst2", "validation", str(tmp_path))
  assert len(ex) == 4
  assert ex.text_a == ['he said "hi', "", "trailing space . ",
                       '"fully quoted"']
  assert ex.text_b is None
  assert ex.labels.dtype == np.int32
  np.testing.assert_array_equal(ex.labels, [1, 0, 0, 1])


def test_cola_headerless(tmp_path):
  _write_tsv(tmp_path, "CoLA", "train.tsv", [
      ["gj04", "1", "", "The sailors rode the breeze."],
      ["gj04", "0", "*", 'They said "go'],
      ["bc01", "1", "", ""],
  ], final_newline=False)
  ex = glue.load_tsv("cola", "train", str(tmp_path))
  assert ex.text_a == ["The sailors rode the breeze.", 'They said "go', ""]
  assert ex.text_b is None
  np.testing.assert_array_equal(ex.labels, [1, 0, 1])


def test_cola_with_header_line_is_rejected(tmp_path):
  # The first line is data in CoLA, so a 2-column header is malformed.
  path = _write_tsv(tmp_path, "CoLA", "dev.tsv", [
      ["index", "sentence"],
      ["gj04", "1", "", "A sentence."],
  ])
  with pytest.raises(ValueError, match=re.escape(f"{path}:1:")):
    glue.load_tsv("cola", "validation", str(tmp_path))


def test_mrpc_bom_header(tmp_path):
  _write_tsv(tmp_path, "MRPC", "train.tsv", [
      ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
      ["1", "702876", "702977", 'Amrozi called him "the witness".',
       '"The witness, he said.'],
      ["0", "2108705", "2108831", "Yucaipa owned it.", ""],
  ], bom=True)
  ex = glue.load_tsv("mrpc", "train", str(tmp_path))
  assert ex.text_a == ['Amrozi called him "the witness".', "Yucaipa owned it."]
  assert ex.text_b == ['"The witness, he said.', ""]
  np.testing.assert_array_equal(ex.labels, [1, 0])
  assert not ex.text_a[0].startswith("\ufeff")


@pytest.mark.parametrize("task,task_dir,text_cols", [
    ("rte", "RTE", ("sentence1", "sentence2")),
    ("qnli", "QNLI", ("question", "sentence")),
])
def test_string_labels_use_tfds_ids(tmp_path, task, task_dir, text_cols):
  _write_tsv(tmp_path, task_dir, "dev.tsv", [
      ["index", *text_cols, "label"],
      ["0", "A dog runs.", "An animal moves.", "entailment"],
      ["1", 'Q "x', "B.", "not_entailment"],
      ["2", "C.", "", "not_entailment"],
  ])
  ex = glue.load_tsv(task, "validation", str(tmp_path))
  assert ex.text_a == ["A dog runs.", 'Q "x', "C."]
  assert ex.text_b == ["An animal moves.", "B.", ""]
  assert ex.labels.dtype == np.int32
  np.testing.assert_array_equal(ex.labels, [0, 1, 1])


def test_stsb_float_scores(tmp_path):
  header = ["index", "genre", "filename", "year", "old_index", "source1",
            "source2", "sentence1", "sentence2", "score"]
  _write_tsv(tmp_path, "STS-B", "dev.tsv", [
      header,
      ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
       "A man is dancing.", "A man dances.", "5.000"],
      ["1", "main-news", "MSRvid", "2012test", "0002", "none", "none",
       'He said "no', "A child rides.", "0.250"],
  ])
  ex = glue.load_tsv("stsb", "validation", str(tmp_path))
  assert ex.labels.dtype == np.float32
  np.testing.assert_allclose(ex.labels, [5.0, 0.25])
  assert ex.text_a == ["A man is dancing.", 'He said "no']
  assert ex.text_b == ["A man dances.", "A child rides."]


def test_wnli_int_labels(tmp_path):
  _write_tsv(tmp_path, "WNLI", "train.tsv", [
      ["index", "sentence1", "sentence2", "label"],
      ["0", "The drain is clogged.", "It is clogged.", "1"],
      ["1", "Jane knocked.", "Susan did not answer.", "0"],
  ])
  ex = glue.load_tsv("wnli", "train", str(tmp_path))
  np.testing.assert_array_equal(ex.labels, [1, 0])
  assert ex.text_b == ["It is clogged.", "Susan did not answer."]


def test_qqp_layout(tmp_path):
  _write_tsv(tmp_path, "QQP", "dev.tsv", [
      ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
      ["201359", "303345", "303346", "Why are people so obsessed?",
       'Why do "people" care?', "0"],
      ["263843", "69383", "380476", "Is it good?", "Is it fine?", "1"],
  ])
  ex = glue.load_tsv("qqp", "validation", str(tmp_path))
  assert ex.text_a == ["Why are people so obsessed?", "Is it good?"]
  assert ex.text_b == ['Why do "people" care?', "Is it fine?"]
  np.testing.assert_array_equal(ex.labels, [0, 1])


_MNLI_PREFIX = ["index", "promptID", "pairID", "genre",
                "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def _mnli_row(i, s1, s2, labels):
  return [str(i), "31193", f"{i}n", "government", "( ( x ) )", "( y )",
          "(ROOT (S x))", "(ROOT (S y))", s1, s2, *labels]


def test_mnli_train_and_both_dev_files(tmp_path):
  # train: label1 + gold_label; dev: label1..label5 + gold_label.
  _write_tsv(tmp_path, "MNLI", "train.tsv", [
      _MNLI_PREFIX + ["label1", "gold_label"],
      _mnli_row(0, "Conceptually cream skimming.", "Product and geography.",
                ["neutral", "neutral"]),
      _mnli_row(1, 'He said "yes', "He agreed.",
                ["entailment", "entailment"]),
      _mnli_row(2, "One.", "", ["contradiction", "contradiction"]),
  ])
  dev_header = _MNLI_PREFIX + [f"label{i}" for i in range(1, 6)] + [
      "gold_label"]
  _write_tsv(tmp_path, "MNLI", "dev_matched.tsv", [
      dev_header,
      _mnli_row(0, "A.", "B.", ["neutral"] * 5 + ["contradiction"]),
  ])
  _write_tsv(tmp_path, "MNLI", "dev_mismatched.tsv", [
      dev_header,
      _mnli_row(0, "C.", "D.", ["entailment"] * 6),
      _mnli_row(1, "E.", "F.", ["neutral"] * 6),
  ])
  train = glue.load_tsv("mnli", "train", str(tmp_path))
  assert train.text_a == ["Conceptually cream skimming.", 'He said "yes',
                          "One."]
  assert train.text_b == ["Product and geography.", "He agreed.", ""]
  np.testing.assert_array_equal(train.labels, [1, 0, 2])
  matched = glue.load_tsv("mnli", "validation_matched", str(tmp_path))
  np.testing.assert_array_equal(matched.labels, [2])  # gold_label, not label1.
  mismatched = glue.load_examples("mnli", "validation_mismatched",
                                  glue_dir=str(tmp_path))
  assert mismatched.text_a == ["C.", "E."]
  np.testing.assert_array_equal(mismatched.labels, [0, 1])


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad_row,reason", [
    (["only one column"], "columns"),
    (["a", "1", "extra"], "columns"),
    (["text", "x"], "label"),
    (["text", ""], "label"),
    (["text", "2"], "label"),         # Out of range for a binary task.
    ("", "columns"),                  # A blank line is not an example.
])
def test_malformed_row_names_file_and_line(tmp_path, bad_row, reason):
  path = _write_tsv(tmp_path, "SST-2", "train.tsv", [
      ["sentence", "label"],
      ["fine", "1"],
      bad_row,
      ["also fine", "0"],
  ])
  with pytest.raises(ValueError) as err:
    glue.load_tsv("sst2", "train", str(tmp_path))
  msg = str(err.value)
  assert f"{path}:3:" in msg
  assert "train.tsv" in msg
  assert reason in msg


def test_unknown_string_label(tmp_path):
  path = _write_tsv(tmp_path, "RTE", "train.tsv", [
      ["index", "sentence1", "sentence2", "label"],
      ["0", "a", "b", "entailment"],
      ["1", "a", "b", "neutral"],
  ])
  pattern = re.escape(f"{path}:3: bad label") + ".*neutral"
  with pytest.raises(ValueError, match=pattern):
    glue.load_tsv("rte", "train", str(tmp_path))


def test_bad_score(tmp_path):
  header = ["index", "genre", "filename", "year", "old_index", "source1",
            "source2", "sentence1", "sentence2", "score"]
  row = ["0", "g", "f", "y", "o", "s", "s", "a", "b"]
  path = _write_tsv(tmp_path, "STS-B", "train.tsv", [
      header, row + ["1.5"], row + ["1.5"], row + ["nan"]])
  with pytest.raises(ValueError, match=re.escape(f"{path}:4:")):
    glue.load_tsv("stsb", "train", str(tmp_path))


def test_cola_wrong_width(tmp_path):
  path = _write_tsv(tmp_path, "CoLA", "train.tsv", [
      ["gj04", "1", "", "ok"],
      ["gj04", "1", "ok"],
  ])
  with pytest.raises(ValueError, match=re.escape(f"{path}:2: expected 4")):
    glue.load_tsv("cola", "train", str(tmp_path))


def test_header_missing_column(tmp_path):
  path = _write_tsv(tmp_path, "QNLI", "dev.tsv", [
      ["index", "question", "sentence"],   # Test-style file, no label.
      ["0", "q", "s"],
  ])
  with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*label"):
    glue.load_tsv("qnli", "validation", str(tmp_path))


def test_empty_and_header_only_files(tmp_path):
  _write_tsv(tmp_path, "SST-2", "train.tsv", [["sentence", "label"]])
  with pytest.raises(ValueError, match="no examples"):
    glue.load_tsv("sst2", "train", str(tmp_path))
  (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"")
  with pytest.raises(ValueError, match="empty file"):
    glue.load_tsv("sst2", "validation", str(tmp_path))


def test_invalid_utf8(tmp_path):
  folder = tmp_path / "SST-2"
  folder.mkdir()
  (folder / "train.tsv").write_bytes(b"sentence\tlabel\nbad \xff byte\t1\n")
  with pytest.raises(ValueError, match="train.tsv.*UTF-8"):
    glue.load_tsv("sst2", "train", str(tmp_path))


def test_missing_file_names_path(tmp_path):
  expected = os.path.join(str(tmp_path), "RTE", "dev.tsv")
  with pytest.raises(FileNotFoundError) as err:
    glue.load_tsv("rte", "validation", str(tmp_path))
  assert expected in str(err.value)
  with pytest.raises(FileNotFoundError, match="dev.tsv"):
    glue.load_tsv("cola", "validation", str(tmp_path))


def test_examples_checks_lengths():
  with pytest.raises(ValueError):
    glue.Examples(["a", "b"], ["c"], np.zeros(2, np.int32))
  with pytest.raises(ValueError):
    glue.Examples(["a"], None, np.zeros(2, np.int32))
  assert len(glue.Examples(["a"], None, np.zeros(1, np.int32))) == 1


# ----------------------------------------------------- choosing the source


def test_find_glue_dir(tmp_path, monkeypatch):
  assert glue.find_glue_dir() is None
  assert glue.find_glue_dir(str(tmp_path)) == str(tmp_path)
  other = tmp_path / "other"
  other.mkdir()
  monkeypatch.setenv(glue.GLUE_DIR_ENV, str(other))
  assert glue.find_glue_dir() == str(other)
  assert glue.find_glue_dir(str(tmp_path)) == str(tmp_path)  # Arg wins.
  monkeypatch.setenv(glue.GLUE_DIR_ENV, "")
  assert glue.find_glue_dir() is None
  missing = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing"):
    glue.find_glue_dir(missing)
  monkeypatch.setenv(glue.GLUE_DIR_ENV, missing)
  with pytest.raises(FileNotFoundError, match=glue.GLUE_DIR_ENV):
    glue.find_glue_dir()


def test_beside_checkout_comes_after_env(tmp_path, monkeypatch):
  beside = tmp_path / "shared" / "data" / "glue"
  beside.mkdir(parents=True)
  monkeypatch.setattr(glue, "DEFAULT_GLUE_DIRS", (str(tmp_path / "no"),
                                                  str(beside)))
  assert glue.locate_glue_dir() == (str(beside), "beside the checkout")
  assert "TSV folder" in glue.describe_source("sst2")
  monkeypatch.setenv(glue.GLUE_DIR_ENV, str(tmp_path))
  assert glue.locate_glue_dir() == (str(tmp_path), f"${glue.GLUE_DIR_ENV}")
  monkeypatch.delenv(glue.GLUE_DIR_ENV)
  monkeypatch.setattr(glue, "DEFAULT_GLUE_DIRS", (str(tmp_path / "no"),))
  line = glue.describe_source("sst2")
  assert line.startswith("GLUE sst2 from TFDS glue/sst2")
  assert str(tmp_path / "no") in line
  assert glue._checkout_glue_dir().endswith(os.path.join("shared", "data", "glue"))


def test_auto_prefers_tsv_from_env(tmp_path, monkeypatch):
  _write_tsv(tmp_path, "SST-2", "dev.tsv", [["sentence", "label"],
                                            ["good", "1"]])
  monkeypatch.setenv(glue.GLUE_DIR_ENV, str(tmp_path))
  # TFDS must not be touched when a GLUE folder is set.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  ex = glue.load_examples("sst2", "validation")
  assert ex.text_a == ["good"]
  ex = glue.load_examples("sst2", "validation", source="tsv")
  assert len(ex) == 1


def _assert_names_both_ways(message, task):
  assert "config.data.glue_dir" in message
  assert glue.GLUE_DIR_ENV in message
  assert "download_glue_data.py" in message
  assert "tensorflow-cpu" in message
  assert f"glue/{task}" in message


def test_missing_source_names_both_ways(monkeypatch):
  # Make `import tensorflow_datasets` fail as if it were not installed.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(glue.GlueDataError) as err:
    glue.load_examples("rte", "train")
  _assert_names_both_ways(str(err.value), "rte")
  with pytest.raises(glue.GlueDataError) as err:
    glue.load_tfds("cola", "validation")
  _assert_names_both_ways(str(err.value), "cola")
  with pytest.raises(glue.GlueDataError) as err:
    glue.load_examples("sst2", "train", source="tsv")
  _assert_names_both_ways(str(err.value), "sst2")


class _FailingTfds:
  """Stands in for tensorflow_datasets whose dataset cannot be built."""

  @staticmethod
  def load(name, **kwargs):
    del kwargs
    raise RuntimeError(f"dataset {name} not found")


def test_tfds_load_failure_names_both_ways(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", _FailingTfds)
  with pytest.raises(glue.GlueDataError) as err:
    glue.load_examples("mnli", "validation_matched")
  _assert_names_both_ways(str(err.value), "mnli")
  assert "dataset glue/mnli not found" in str(err.value)
  assert isinstance(err.value.__cause__, RuntimeError)


def test_unknown_source(tmp_path):
  with pytest.raises(ValueError, match="source"):
    glue.load_examples("sst2", "train", glue_dir=str(tmp_path), source="hf")


# ------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("task,split", [
    ("sst2", "validation"),
    ("rte", "train"),
    ("mnli", "validation_mismatched"),
    ("stsb", "validation"),
])
def test_tfds_mock(task, split):
  pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  info = glue.TASKS[task]
  with tfds.testing.mock_data(num_examples=7):
    ex = glue.load_examples(task, split, source="tfds")
  assert len(ex) == 7
  assert all(isinstance(t, str) for t in ex.text_a)
  if len(info.text_keys) == 1:
    assert ex.text_b is None
  else:
    assert len(ex.text_b) == 7
    assert all(isinstance(t, str) for t in ex.text_b)
  if info.num_labels == 1:
    assert ex.labels.dtype == np.float32
  else:
    assert ex.labels.dtype == np.int32
    assert all(isinstance(v, int) for v in ex.labels.tolist())
    assert ex.labels.min() >= 0 and ex.labels.max() < info.num_labels


# ------------------------------------------------------------- real files


# Found at import time, before the autouse fixture hides both places.
_REAL_DIR = os.environ.get(glue.GLUE_DIR_ENV) or next(
    (d for d in glue.DEFAULT_GLUE_DIRS if os.path.isdir(d)), None)


def _real_glue_dir(monkeypatch):
  """Returns the real GLUE folder (and restores the env var), or skips."""
  if not _REAL_DIR or not os.path.isdir(_REAL_DIR):
    pytest.skip(f"No real GLUE folder (${glue.GLUE_DIR_ENV} or beside the "
                "checkout).")
  monkeypatch.setenv(glue.GLUE_DIR_ENV, _REAL_DIR)
  return _REAL_DIR


@pytest.mark.parametrize("task,split,count", [
    ("sst2", "train", 67349),
    ("sst2", "validation", 872),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("cola", "train", 8551),
    ("cola", "validation", 1043),
    ("rte", "train", 2490),
    ("rte", "validation", 277),
    ("stsb", "train", 5749),
    ("stsb", "validation", 1500),
    ("qnli", "validation", 5463),
    ("wnli", "train", 635),
    ("wnli", "validation", 71),
])
def test_real_file_counts(monkeypatch, task, split, count):
  glue_dir = _real_glue_dir(monkeypatch)
  if not os.path.isfile(glue.tsv_path(task, split, glue_dir)):
    pytest.skip(f"{task} {split} not in {glue_dir}.")
  ex = glue.load_examples(task, split, source="tsv")
  assert len(ex) == count
  info = glue.TASKS[task]
  assert (ex.text_b is None) == (len(info.text_keys) == 1)
  if info.num_labels == 1:
    assert ex.labels.min() >= 0.0 and ex.labels.max() <= 5.0
  else:
    # Every class occurs in every real split.
    assert set(ex.labels.tolist()) == set(range(info.num_labels))


def test_real_file_contents(monkeypatch):
  glue_dir = _real_glue_dir(monkeypatch)
  sst2 = glue.load_tsv("sst2", "validation", glue_dir)
  assert sst2.text_a[0] == "it 's a charming and often affecting journey . "
  assert sst2.labels[:2].tolist() == [1, 0]
  mrpc = glue.load_tsv("mrpc", "validation", glue_dir)
  # A lone leading quote survives because quotes are not special.
  assert mrpc.text_b[0].startswith('"The foodservice pie business')
  assert mrpc.labels[:2].tolist() == [1, 0]
  rte = glue.load_tsv("rte", "validation", glue_dir)
  assert rte.labels[:2].tolist() == [1, 0]  # not_entailment, entailment.
  cola = glue.load_tsv("cola", "validation", glue_dir)
  assert cola.text_a[0] == "The sailors rode the breeze clear of the rocks."
  stsb = glue.load_tsv("stsb", "validation", glue_dir)
  np.testing.assert_allclose(stsb.labels[:2], [5.0, 4.75])
