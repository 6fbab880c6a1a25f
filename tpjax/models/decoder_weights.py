"""Import of Llama-family decoder weights from a GGUF file or a Hugging Face directory.

Both sources are first brought to Hugging Face tensor names and float32; the rename to
tpjax paths is then shared: `model.layers.0.self_attn.q_proj.weight` ->
model/layers/0/self_attn/q_proj/kernel (transposed), `model.embed_tokens.weight` ->
model/embed_tokens/embedding, norms keep `weight`. The result is checked against the
shapes of the model's own init; any missing, unexpected or mis-shaped tensor is
reported in one error.
"""

import glob
import json
import os
from typing import Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import decoder as decoder_lib
from tpjax.models import gguf_file
from tpjax.models import hf_weights
from tpjax.models import llama_tokenizer

# Buffers some HF checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_key_to_path(key: str) -> tuple[tuple[str, ...], bool]:
  """Maps an HF Llama tensor name to (tpjax param path, transpose?)."""
  *scope, leaf = key.split(".")
  if scope and scope[-1] == "embed_tokens":
    return tuple(scope) + ("embedding",), False
  if scope and scope[-1].endswith(("norm", "layernorm")):
    return tuple(scope) + (leaf,), False
  if leaf == "weight":
    return tuple(scope) + ("kernel",), True
  return tuple(scope) + (leaf,), False


def convert(tensors: Mapping[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  """Renames and transposes HF tensors into flat {tpjax path: array}."""
  flat = {}
  for key, value in tensors.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    path, transpose = hf_key_to_path(key)
    flat[path] = value.T if transpose else value
  return flat


def export_state_dict(params: dict) -> dict[str, np.ndarray]:
  """The inverse of `convert`: tpjax params -> HF Llama tensor names."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    *scope, leaf = path
    value = np.asarray(value)
    if leaf == "kernel":
      out[".".join(scope) + ".weight"] = np.ascontiguousarray(value.T)
    elif leaf == "embedding":
      out[".".join(scope) + ".weight"] = value
    else:
      out[".".join(path)] = value
  return out


def fit_to_model(model: decoder_lib.DecoderModel, flat: Mapping[tuple, np.ndarray],
                 source: str, extra_unexpected: tuple[str, ...] = ()) -> dict:
  """Checks converted weights against the model's init shapes; returns params.

  Raises:
    hf_weights.WeightImportError: listing every missing, unexpected and mis-shaped
      tensor.
  """
  expected = flax.traverse_util.flatten_dict(
      jax.eval_shape(lambda: decoder_lib.init_params(model, jax.random.PRNGKey(0))))
  missing = [p for p in expected if p not in flat]
  unexpected = [p for p in flat if p not in expected]
  misshaped = [f"{'/'.join(p)}: checkpoint {flat[p].shape} vs model {expected[p].shape}"
               for p in flat if p in expected and flat[p].shape != expected[p].shape]
  if missing or unexpected or misshaped or extra_unexpected:
    lines = [f"{source} does not fit a {model.config.model_type} decoder with "
             f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
             f"tie_word_embeddings={model.config.tie_word_embeddings}:"]
    lines += [f"  missing: {'/'.join(p)}" for p in missing]
    lines += [f"  unexpected: {'/'.join(p)}" for p in unexpected]
    lines += [f"  unexpected: {name}" for name in extra_unexpected]
    lines += [f"  mis-shaped: {m}" for m in misshaped]
    raise hf_weights.WeightImportError("\n".join(lines))
  return flax.traverse_util.unflatten_dict(
      {p: jnp.asarray(v, expected[p].dtype) for p, v in flat.items()})


def load_gguf(path: str) -> tuple[decoder_lib.DecoderModel, dict, gguf_file.GGUFFile]:
  """Builds a DecoderModel and float32 params from a GGUF file.

  Returns:
    (DecoderModel, params, the opened GGUFFile, whose metadata holds the tokenizer).
  Raises:
    gguf_file.GGUFError: unreadable file, unknown architecture or tensor type.
    hf_weights.WeightImportError: tensors that do not fit the stated configuration.
  """
  f = gguf_file.read(path)
  config = gguf_file.config_from_gguf(f)
  model = decoder_lib.DecoderModel(config)
  tensors, unknown = gguf_file.hf_tensors(f, config)
  params = fit_to_model(model, convert(tensors), path, tuple(unknown))
  logging.info("Loaded %s: %d layers, hidden %d, %s", path, config.num_hidden_layers,
               config.hidden_size, _type_summary(f))
  return model, params, f


def _type_summary(f: gguf_file.GGUFFile) -> str:
  counts = {}
  for t in f.tensors.values():
    counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
  return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of a (possibly sharded) safetensors checkpoint, as float32."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if not files:
    raise hf_weights.WeightImportError(f"No *.safetensors in {directory!r}.")
  tensors = {}
  for name in files:
    for key, value in st_numpy.load_file(name).items():
      tensors[key] = np.asarray(value, np.float32)
  return tensors


def load_hf_directory(directory: str) -> tuple[decoder_lib.DecoderModel, dict]:
  """Builds a DecoderModel and params from config.json + safetensors.

  Raises:
    decoder_lib.ConfigError: unsupported architecture or options.
    hf_weights.WeightImportError: missing files or tensors that do not fit.
  """
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise hf_weights.WeightImportError(f"No config.json in {directory!r}.")
  config = decoder_lib.DecoderConfig.from_json(config_path)
  model = decoder_lib.DecoderModel(config)
  params = fit_to_model(model, convert(read_safetensors(directory)), directory)
  return model, params


def save_hf_directory(directory: str, model: decoder_lib.DecoderModel,
                      params: dict) -> None:
  """Writes config.json and model.safetensors that transformers' Llama loads."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(model.config.to_hf_dict(), f, indent=2)
  st_numpy.save_file(export_state_dict(params),
                     os.path.join(directory, hf_weights.SAFETENSORS))


def is_decoder_source(path: str) -> bool:
  """True for a .gguf file or a Hugging Face directory whose config names a decoder."""
  if path.endswith(".gguf"):
    return True
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    return False
  with open(config_path, encoding="utf-8") as f:
    return json.load(f).get("model_type") in decoder_lib.SUPPORTED_ARCHITECTURES


def load_pretrained_decoder(path: str):
  """(DecoderModel, params, DecoderTokenizer) from a .gguf file or an HF directory."""
  if path.endswith(".gguf"):
    model, params, f = load_gguf(path)
    tokenizer = llama_tokenizer.DecoderTokenizer.from_gguf_metadata(f.metadata)
  else:
    model, params = load_hf_directory(path)
    tokenizer = llama_tokenizer.DecoderTokenizer.from_directory(path)
  return model, params, tokenizer
