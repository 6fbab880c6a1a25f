"""Encoder hyperparameters read from a Hugging Face `config.json`."""

import dataclasses
import json
import os
from typing import Any, Mapping

from tpjax.models import precision

SUPPORTED_MODEL_TYPES = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Sizes and options of a BERT or RoBERTa encoder (frozen, so hashable)."""

  model_type: str = "bert"
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  initializer_range: float = 0.02
  classifier_dropout: float | None = None
  # Dot operand dtype (tpjax/models/precision.py); a run-time choice, not saved.
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not supported; "
                       f"expected one of {SUPPORTED_MODEL_TYPES}.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}.")
    if self.hidden_act not in ("gelu", "relu"):
      raise ValueError(f"hidden_act {self.hidden_act!r} is not supported.")
    precision.check(self.compute_dtype)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
    """Keeps the fields tpjax knows and ignores the rest of an HF config."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    if d.get("classifier_dropout") is not None:
      kwargs["classifier_dropout"] = d["classifier_dropout"]
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str) -> "EncoderConfig":
    with open(path, encoding="utf-8") as f:
      return cls.from_dict(json.load(f))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    del d["compute_dtype"]
    return d

  def save(self, directory: str) -> None:
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(self.to_dict(), f, indent=2)
