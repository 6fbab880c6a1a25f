"""Every notebook in colabs/ runs on tiny settings, and is stored without outputs.

Each notebook has one cell tagged "parameters"; as papermill does, a cell with tiny
values is inserted after it. The quickstart trains a tiny LTP run, which the other
notebooks then reuse, so the suite trains only once. A failing cell fails the test.
"""

import base64
import glob
import os

import pytest

from tests import helpers
from tests import xla_env

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOKS = sorted(glob.glob(os.path.join(_ROOT, "colabs", "*.ipynb")))
_SENTENCES = ["a good film", "the plot is dull and the acting awful"]


def _read(name: str):
  return nbformat.read(os.path.join(_ROOT, "colabs", name), as_version=4)


def _execute(name: str, **parameters):
  """Runs colabs/`name` with `parameters` injected; returns the executed notebook."""
  nb = _read(name)
  tagged = [i for i, c in enumerate(nb.cells)
            if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
  injected = nbformat.v4.new_code_cell(
      "\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(tagged[0] + 1, injected)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": _ROOT}})
  client.execute()
  return nb


def _images(nb) -> list:
  """PNG outputs of the executed notebook, decoded."""
  return [base64.b64decode(out["data"]["image/png"])
          for cell in nb.cells if cell.cell_type == "code"
          for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  # One CPU device in the kernels (the suite's 8 simulated devices would slow them),
  # and one compilation cache, so that later notebooks reuse earlier compilations.
  env = {"XLA_FLAGS": xla_env.flags(), "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, kernel_env):
  """Executes the quickstart on the tiny config; its run serves the other notebooks."""
  del kernel_env
  glue_dir = helpers.write_sst2(str(tmp_path_factory.mktemp("glue")), n_train=32,
                                n_dev=8)
  workdir = str(tmp_path_factory.mktemp("quickstart"))
  # Two layers and one bucket length: fewer programs to compile.
  overrides = {"model.overrides.num_hidden_layers": 2, "data.buckets": (32,)}
  nb = _execute("quickstart.ipynb", CONFIG="tiny", MAX_STEPS=2, GLUE_DIR=glue_dir,
                CONFIG_OVERRIDES=overrides, WORKDIR=workdir, SENTENCES=_SENTENCES)
  return workdir, nb


def test_notebooks_are_stored_without_outputs():
  assert len(_NOTEBOOKS) >= 4
  for path in _NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, path
    assert "widgets" not in nb.metadata, path


def test_notebooks_install_first_and_only_call_the_package():
  for path in _NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "pip" in code[0] and "jax.devices()" in code[0], path
    for source in code:
      # No model or pruning logic of their own: no function or class definitions.
      assert "\ndef " not in "\n" + source and "\nclass " not in "\n" + source, path


def test_quickstart(quickstart_run):
  workdir, nb = quickstart_run
  assert os.path.exists(os.path.join(workdir, "summary.json"))
  text = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for out in c.get("outputs", []))
  assert "Data: GLUE sst2 from TSV folder" in text
  assert "hard: accuracy" in text
  assert len(_images(nb)) == 1


def test_what_gets_pruned(quickstart_run, tmp_path):
  workdir, _ = quickstart_run
  page = str(tmp_path / "kept.html")
  nb = _execute("what_gets_pruned.ipynb", RUNS=[workdir], SENTENCES=_SENTENCES,
                HTML_FILE=page)
  # One heatmap per sentence for the trained run and each training-free method.
  assert len(_images(nb)) == 3 * len(_SENTENCES)
  html_out = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "text/html" in o.get("data", {})]
  assert len(html_out) == 1
  with open(page, encoding="utf-8") as f:
    assert f.read() == html_out[0]["data"]["text/html"]
  assert html_out[0]["data"]["text/html"].count("<section>") == 3 * len(_SENTENCES)


def test_speed(quickstart_run):
  workdir, _ = quickstart_run
  # One batch and one latency example: two input shapes for each engine to compile.
  nb = _execute("speed.ipynb", RUN=workdir, SYSTEMS=["pruned", "unpruned", "keep_all"],
                BATCH_SIZE=4, ROUNDS=1, LATENCY_EXAMPLES=1, MAX_EXAMPLES=4)
  assert len(_images(nb)) == 2


def test_methods_compared(kernel_env):
  del kernel_env
  nb = _execute("methods_compared.ipynb")
  assert len(_images(nb)) == 2
