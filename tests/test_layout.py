"""The package's layers: imports point down, never in a circle.

Entry points (the top-level modules) > inference, training, results > pruning > models >
data. Inference may read checkpoints and errors from training, never the training loop.
"""

import ast
import os

import pytest

_ROOT = os.path.join(os.path.dirname(__file__), "..", "tpjax")
_LEVELS = {"data": 0, "models": 1, "pruning": 2, "inference": 3, "training": 3,
           "results": 3}
_ENTRY = 4


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.join(_ROOT, "..")).removesuffix(".py")
  return rel.replace(os.sep, ".").removesuffix(".__init__")


def _imports() -> dict:
  """{module: set of tpjax modules it imports}, read from the source."""
  graph = {}
  for folder, _, names in os.walk(_ROOT):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      found = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tpjax"):
          for alias in node.names:
            found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
          found.update(a.name for a in node.names if a.name.startswith("tpjax"))
      graph[_module_name(path)] = found
  # `from tpjax.models import encoder` names a module; `from x import f` a symbol.
  return {m: {i if i in graph else i.rsplit(".", 1)[0] for i in deps}
          for m, deps in graph.items()}


def _level(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1:  # the package itself exposes load_pretrained
    return _ENTRY
  return _LEVELS.get(parts[1], _ENTRY)


def test_imports_point_down():
  wrong = [f"{m} imports {d}" for m, deps in _imports().items() for d in deps
           if _level(d) > _level(m)]
  assert not wrong, wrong


def test_inference_never_imports_the_training_loop():
  graph = _imports()
  wrong = [m for m, deps in graph.items() if m.startswith("tpjax.inference")
           and deps & {"tpjax.training.train", "tpjax.training.parallel",
                       "tpjax.training.sdtp_decoder"}]
  assert not wrong, wrong


def test_no_import_cycles():
  graph = _imports()
  state = {}

  def visit(module, stack):
    if state.get(module) == "done":
      return
    if state.get(module) == "open":
      pytest.fail("import cycle: " + " -> ".join(stack + [module]))
    state[module] = "open"
    for dep in graph.get(module, ()):
      visit(dep, stack + [module])
    state[module] = "done"

  for module in graph:
    visit(module, [])


def test_only_entry_points_and_their_helper_at_the_top():
  top = sorted(n for n in os.listdir(_ROOT) if n.endswith(".py"))
  assert top == ["__init__.py", "benchmark.py", "cli.py", "generate.py", "main.py",
                 "predict.py", "report.py"]


def test_readme_layout_names_every_module():
  """README's Layout section shows the same picture as `ls tpjax`."""
  with open(os.path.join(_ROOT, "..", "README.md"), encoding="utf-8") as f:
    text = f.read()
  layout = text[text.index("## Layout"):]
  layout = layout[:layout.index("\n## ")]
  for mark in "(),;:":
    layout = layout.replace(mark, " ")
  words = set(layout.split())
  missing = []
  for name in sorted(os.listdir(_ROOT)):
    path = os.path.join(_ROOT, name)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
      if name + "/" not in words:
        missing.append(name + "/")
      missing += [f"{name}/{m}" for m in sorted(os.listdir(path))
                  if m.endswith(".py") and m != "__init__.py"
                  and m.removesuffix(".py") not in words]
    elif name.endswith(".py") and name not in words:
      missing.append(name)
  assert not missing, f"README's Layout does not name {missing}"
