"""Reading Llama-family GGUF files (llama.cpp's format) with the `gguf` package.

A GGUF file holds metadata (architecture, sizes, tokenizer) and tensors, quantised or
not. This module turns it into what the rest of tpjax speaks: a `DecoderConfig`, float32
tensors under their Hugging Face names, and the metadata dict for the tokenizer.

Two conventions differ from Hugging Face:

- llama.cpp's converter permutes the rows of attn_q/attn_k so that each head's two
  RoPE halves are interleaved (pairs 0,1 / 2,3 ... instead of i, i + head_dim / 2).
  `unpermute_rope_rows` undoes it.
- GGUF shapes are listed fastest dimension first; the arrays the `gguf` reader returns
  are already in numpy order [out_features, in_features], the layout of HF's weights.
"""

import dataclasses
import os
import re
from typing import Any, Mapping

import gguf
import numpy as np

from tpjax.models import decoder as decoder_lib

SUPPORTED_TENSOR_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
# llama.cpp tensor names -> Hugging Face Llama names ({i} is the layer index).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Tensors llama.cpp may store that are derived buffers, not weights.
_IGNORED = ("rope_freqs.weight",)
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


class GGUFError(ValueError):
  """A GGUF file tpjax cannot read; the message says what was found and what works."""


@dataclasses.dataclass
class GGUFFile:
  """An opened GGUF file: its metadata and its (still encoded) tensors by name."""
  path: str
  metadata: dict[str, Any]
  tensors: dict[str, Any]  # name -> gguf.ReaderTensor

  @property
  def architecture(self) -> str:
    return self.metadata.get("general.architecture", "<missing>")


def read(path: str) -> GGUFFile:
  """Opens a GGUF file and checks that every tensor's bytes are present.

  Raises:
    GGUFError: if the file is missing, not GGUF, or truncated.
  """
  if not os.path.isfile(path):
    raise GGUFError(f"No GGUF file at {path!r}.")
  size = os.path.getsize(path)
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader raises whatever numpy raises on short data
    raise GGUFError(
        f"{path!r} ({size} bytes) is not a readable GGUF file: {type(e).__name__}: {e}. "
        "A truncated download is the usual cause; supported: complete GGUF v2/v3 "
        "files.") from e
  metadata = {}
  for name, field in reader.fields.items():
    if name.startswith("GGUF."):
      continue
    try:
      metadata[name] = field.contents()
    except Exception as e:
      raise GGUFError(f"{path!r}: metadata field {name!r} is unreadable ({e}); the file "
                      "is truncated or corrupt.") from e
  tensors = {t.name: t for t in reader.tensors}
  short = [f"{t.name} (needs bytes up to {t.data_offset + t.n_bytes})"
           for t in reader.tensors if t.data_offset + t.n_bytes > size]
  if short:
    raise GGUFError(
        f"{path!r} is truncated: it has {size} bytes but {len(short)} of "
        f"{len(tensors)} tensors end beyond that, e.g. {', '.join(short[:3])}.")
  return GGUFFile(path=path, metadata=metadata, tensors=tensors)


def _arch_key(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
  arch = metadata.get("general.architecture")
  return metadata.get(f"{arch}.{key}", default)


def config_from_gguf(f: GGUFFile) -> decoder_lib.DecoderConfig:
  """The decoder configuration stated by the file's metadata.

  Raises:
    GGUFError: for an architecture or RoPE variant this decoder does not implement.
  """
  md = f.metadata
  arch = f.architecture
  if arch not in decoder_lib.SUPPORTED_ARCHITECTURES:
    raise GGUFError(f"{f.path!r} has architecture {arch!r}; supported: "
                    f"{', '.join(decoder_lib.SUPPORTED_ARCHITECTURES)}.")
  scaling = _arch_key(md, "rope.scaling.type", "none")
  if scaling not in ("none", None):
    raise GGUFError(f"{f.path!r} uses RoPE scaling {scaling!r}; supported: none.")
  required = ("block_count", "embedding_length", "feed_forward_length",
              "attention.head_count")
  missing = [f"{arch}.{k}" for k in required if _arch_key(md, k) is None]
  if missing:
    raise GGUFError(f"{f.path!r} lacks metadata {', '.join(missing)}.")
  embd = f.tensors.get("token_embd.weight")
  tokens = md.get("tokenizer.ggml.tokens")
  vocab = _arch_key(md, "vocab_size") or (len(tokens) if tokens else None)
  if vocab is None and embd is not None:
    vocab = int(embd.shape[-1])
  if vocab is None:
    raise GGUFError(f"{f.path!r} states no vocabulary size and has no token_embd.weight.")
  heads = int(_arch_key(md, "attention.head_count"))
  hidden = int(_arch_key(md, "embedding_length"))
  head_dim = _arch_key(md, "attention.key_length") or _arch_key(md, "rope.dimension_count")
  if head_dim is not None and int(head_dim) != hidden // heads:
    raise GGUFError(f"{f.path!r}: head size {head_dim} with partial RoPE or a head size "
                    f"other than hidden/heads ({hidden // heads}) is not supported.")
  return decoder_lib.DecoderConfig(
      model_type=arch,
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(_arch_key(md, "feed_forward_length")),
      num_hidden_layers=int(_arch_key(md, "block_count")),
      num_attention_heads=heads,
      num_key_value_heads=int(_arch_key(md, "attention.head_count_kv", heads)),
      rms_norm_eps=float(_arch_key(md, "attention.layer_norm_rms_epsilon", 1e-5)),
      rope_theta=float(_arch_key(md, "rope.freq_base", 10000.0)),
      max_position_embeddings=int(_arch_key(md, "context_length", 2048)),
      tie_word_embeddings="output.weight" not in f.tensors,
      bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
      eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
      pad_token_id=md.get("tokenizer.ggml.padding_token_id"))


def dequantize(tensor) -> np.ndarray:
  """A GGUF tensor as float32 in numpy order ([out_features, in_features] for weights).

  Raises:
    GGUFError: for a tensor type outside SUPPORTED_TENSOR_TYPES.
  """
  kind = tensor.tensor_type.name
  if kind not in SUPPORTED_TENSOR_TYPES:
    raise GGUFError(f"Tensor {tensor.name!r} is stored as {kind}; supported tensor types: "
                    f"{', '.join(SUPPORTED_TENSOR_TYPES)}.")
  shape = tuple(int(d) for d in reversed(tensor.shape))
  out = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
  return np.asarray(out, np.float32).reshape(shape)


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row order: per head, rows (0, 1, 2, 3, ...) held the
  pairs (i, i + d/2) interleaved; HF keeps the two halves apart.

  Args:
    w: <float32>[num_heads * head_dim, in_features] as stored in the GGUF.
    num_heads: query heads for attn_q, key/value heads for attn_k.
  Returns:
    <float32>[num_heads * head_dim, in_features] in Hugging Face row order.
  """
  rows = w.shape[0]
  head_dim = rows // num_heads
  return (w.reshape(num_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def hf_name(gguf_name: str) -> str | None:
  """The Hugging Face name of a llama.cpp tensor, or None if unknown."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_RE.match(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
  return None


def hf_tensors(f: GGUFFile, config: decoder_lib.DecoderConfig
               ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Dequantises every tensor and renames it to its Hugging Face name.

  Checks every tensor's type before decoding any, so one error lists them all.

  Returns:
    ({hf name: float32 array}, GGUF names that have no Hugging Face counterpart).
  Raises:
    GGUFError: listing every tensor of an unsupported type.
  """
  unsupported = [f"{t.name} ({t.tensor_type.name})" for t in f.tensors.values()
                 if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES]
  if unsupported:
    raise GGUFError(
        f"{f.path!r} stores {len(unsupported)} tensors in unsupported types: "
        f"{', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}; "
        f"supported tensor types: {', '.join(SUPPORTED_TENSOR_TYPES)}.")
  out, unknown = {}, []
  for name, tensor in f.tensors.items():
    if name in _IGNORED:
      continue
    target = hf_name(name)
    if target is None:
      unknown.append(name)
      continue
    value = dequantize(tensor)
    if target.endswith("q_proj.weight"):
      value = unpermute_rope_rows(value, config.num_attention_heads)
    elif target.endswith("k_proj.weight"):
      value = unpermute_rope_rows(value, config.num_key_value_heads)
    out[target] = value
  return out, unknown
