"""Import of Hugging Face BERT/RoBERTa weights (safetensors or pytorch_model.bin).

HF keys become tpjax parameter paths by a rename and, for dense kernels, a transpose:
`bert.encoder.layer.0.attention.self.query.weight` -> encoder/layer/0/attention/self/
query/kernel (transposed). The result is checked against the shapes of the model's own
init; any missing, unexpected or mis-shaped key is reported in one error.
"""

import os
from typing import Mapping, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
# Subtrees a checkpoint may lack: they are initialised fresh and logged.
HEAD_SUBTREES = ("pooler", "classifier")
# Checkpoint entries that are not encoder parameters (buffers, pretraining heads).
_IGNORED_PREFIXES = ("cls.", "lm_head.", "qa_outputs.")
_IGNORED_SUFFIXES = ("position_ids", "token_type_ids")
_MODEL_PREFIXES = ("bert.", "roberta.")


class WeightImportError(ValueError):
  """A checkpoint that does not fit the model; the message lists every problem."""


def read_checkpoint(directory: str) -> dict[str, np.ndarray]:
  """Reads a checkpoint's tensors as float32 numpy arrays, keyed by HF name."""
  st_path = os.path.join(directory, SAFETENSORS)
  bin_path = os.path.join(directory, TORCH_BIN)
  if os.path.exists(st_path):
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    try:
      tensors = st_numpy.load_file(st_path)
    except Exception as e:  # pylint: disable=broad-except
      # safetensors' own message ("incomplete metadata, file not fully covered")
      # does not say which file.
      raise WeightImportError(
          f"{st_path} cannot be read ({type(e).__name__}: {e}); the file is probably "
          "truncated or damaged. Download or copy it again.") from e
  elif os.path.exists(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise WeightImportError(
          f"{bin_path} needs torch to read; install torch or convert the checkpoint "
          f"to {SAFETENSORS}.") from e
    try:
      state = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise WeightImportError(
          f"{bin_path} cannot be read ({type(e).__name__}: {e}); the file is probably "
          "truncated or damaged. Download or copy it again.") from e
    tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
               for k, v in state.items()}
  else:
    raise WeightImportError(
        f"No weights in {directory!r}: looked for {SAFETENSORS} and {TORCH_BIN}.")
  return {k: np.asarray(v) for k, v in tensors.items()}


def hf_key_to_path(key: str) -> Optional[tuple[tuple[str, ...], bool]]:
  """Maps an HF tensor name to (tpjax param path, transpose?); None if ignored."""
  if key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES):
    return None
  for prefix in _MODEL_PREFIXES:
    if key.startswith(prefix):
      key = key[len(prefix):]
      break
  parts = key.split(".")
  *scope, leaf = parts
  owner = scope[-1] if scope else ""
  if owner.endswith("embeddings") and leaf == "weight":
    return tuple(scope) + ("embedding",), False
  if owner == "LayerNorm" or owner.endswith("layer_norm"):
    return tuple(scope) + ({"weight": "scale", "gamma": "scale",
                            "bias": "bias", "beta": "bias"}[leaf],), False
  if leaf == "weight":
    return tuple(scope) + ("kernel",), True
  return tuple(parts), False


def convert(tensors: Mapping[str, np.ndarray]) -> tuple[dict, list[str]]:
  """Renames and transposes HF tensors. Returns (flat {path: array}, ignored keys)."""
  flat, ignored = {}, []
  for key, value in tensors.items():
    mapped = hf_key_to_path(key)
    if mapped is None:
      ignored.append(key)
      continue
    path, transpose = mapped
    flat[path] = value.T if transpose else value
  return flat, ignored


def export_state_dict(params: dict, model_type: str) -> dict[str, np.ndarray]:
  """The inverse of `convert`: tpjax params -> HF tensor names (for PyTorch).

  Base-model entries get the `bert.` / `roberta.` prefix of the *ForSequence-
  Classification classes; the classifier keeps its own name.
  """
  out = {}
  flat = flax.traverse_util.flatten_dict(params)
  for path, value in flat.items():
    *scope, leaf = path
    value = np.asarray(value)
    prefix = "" if scope[0] == "classifier" else f"{model_type}."
    name = prefix + ".".join(scope)
    if leaf == "kernel":
      out[f"{name}.weight"] = np.ascontiguousarray(value.T)
    elif leaf in ("scale", "embedding"):
      out[f"{name}.weight"] = value
    else:
      out[f"{name}.{leaf}"] = value
  return out


def init_shapes(model: encoder_lib.EncoderModel) -> dict:
  """Parameter shapes of a fresh init, computed without allocating."""
  return jax.eval_shape(lambda: encoder_lib.init_params(model, jax.random.PRNGKey(0)))


def fit_to_model(model: encoder_lib.EncoderModel, flat: Mapping[tuple, np.ndarray],
                 rng: jax.Array, source: str = "checkpoint") -> dict:
  """Checks converted weights against the model and fills absent heads fresh.

  Raises:
    WeightImportError: listing every missing, unexpected and mis-shaped key.
  """
  expected = flax.traverse_util.flatten_dict(init_shapes(model))
  missing = [p for p in expected if p not in flat and p[0] not in HEAD_SUBTREES]
  unexpected = [p for p in flat if p not in expected]
  misshaped = [f"{'/'.join(p)}: checkpoint {flat[p].shape} vs model {expected[p].shape}"
               for p in flat if p in expected and flat[p].shape != expected[p].shape]
  if missing or unexpected or misshaped:
    lines = [f"{source} does not fit a {model.config.model_type} encoder "
             f"(num_labels={model.num_labels}):"]
    lines += [f"  missing: {'/'.join(p)}" for p in missing]
    lines += [f"  unexpected: {'/'.join(p)}" for p in unexpected]
    lines += [f"  mis-shaped: {m}" for m in misshaped]
    raise WeightImportError("\n".join(lines))

  fresh_paths = [p for p in expected if p not in flat]
  merged = {p: jnp.asarray(v, expected[p].dtype) for p, v in flat.items()}
  if fresh_paths:
    fresh = flax.traverse_util.flatten_dict(encoder_lib.init_params(model, rng))
    subtrees = sorted({p[0] for p in fresh_paths})
    logging.info("Initialised fresh (absent from %s): %s", source, ", ".join(subtrees))
    for p in fresh_paths:
      merged[p] = fresh[p]
  return flax.traverse_util.unflatten_dict(merged)


def load_hf_model(directory: str, num_labels: Optional[int] = None,
                  rng: Optional[jax.Array] = None):
  """Builds an EncoderModel and its params from a local HF model directory.

  Args:
    directory: holds config.json and model.safetensors (or pytorch_model.bin).
    num_labels: None for the bare encoder, else the head's output size.
    rng: key for heads absent from the checkpoint (default PRNGKey(0)).
  Returns:
    (EncoderModel, params).
  """
  if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
    raise WeightImportError(f"num_labels={num_labels!r} is not allowed (None for the "
                            "bare encoder, 1 for a regression head, or the number of "
                            "classes).")
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise WeightImportError(f"No config.json in {directory!r}.")
  config = config_lib.EncoderConfig.from_json(config_path)
  model = encoder_lib.EncoderModel(config, num_labels=num_labels)
  flat, ignored = convert(read_checkpoint(directory))
  if ignored:
    logging.info("Ignored checkpoint entries that are not encoder weights: %s",
                 ", ".join(sorted(ignored)))
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return model, fit_to_model(model, flat, rng, source=directory)
