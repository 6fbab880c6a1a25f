"""Tokenization with Hugging Face `tokenizers` (Rust), numpy output."""

import os
from typing import Optional, Sequence

import numpy as np
import tokenizers
from tokenizers import implementations


class Tokenizer:
  """Turns sentences or sentence pairs into padded numpy arrays.

  Reads `tokenizer.json` when the checkpoint has one, else a WordPiece `vocab.txt`.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, pad_token_id: int,
               max_length: int = 128):
    self._tok = tokenizer
    self._tok.no_padding()
    self._tok.no_truncation()
    self.pad_token_id = pad_token_id
    self.max_length = max_length

  @classmethod
  def from_directory(cls, directory: str, max_length: int = 128,
                     lowercase: bool = True) -> "Tokenizer":
    json_path = os.path.join(directory, "tokenizer.json")
    vocab_path = os.path.join(directory, "vocab.txt")
    if os.path.exists(json_path):
      tok = tokenizers.Tokenizer.from_file(json_path)
    elif os.path.exists(vocab_path):
      tok = implementations.BertWordPieceTokenizer(vocab_path, lowercase=lowercase)._tokenizer  # pylint: disable=protected-access
    else:
      raise FileNotFoundError(
          f"No tokenizer in {directory!r}: looked for tokenizer.json and vocab.txt.")
    pad_id = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>")
                   if tok.token_to_id(t) is not None), 0)
    return cls(tok, pad_id, max_length)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def encode(self, texts: Sequence[str],
             pairs: Optional[Sequence[str]] = None) -> list[tokenizers.Encoding]:
    """Unpadded encodings, truncated (longest first) to `max_length`."""
    self._tok.enable_truncation(self.max_length, strategy="longest_first")
    if pairs is None:
      return self._tok.encode_batch(list(texts))
    if len(pairs) != len(texts):
      raise ValueError(f"{len(texts)} first texts but {len(pairs)} second texts.")
    return self._tok.encode_batch(list(zip(texts, pairs)))

  def pad(self, encodings: Sequence[tokenizers.Encoding],
          length: Optional[int] = None) -> dict[str, np.ndarray]:
    """Pads encodings to `length` (default: the longest).

    Returns:
      `input_ids`, `attention_mask`, `token_type_ids`: <int32>[batch, length].
    """
    longest = max((len(e.ids) for e in encodings), default=1)
    length = longest if length is None else length
    if longest > length:
      raise ValueError(f"An encoding has {longest} tokens, more than length {length}.")
    batch = len(encodings)
    ids = np.full((batch, length), self.pad_token_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    types = np.zeros((batch, length), np.int32)
    for row, enc in enumerate(encodings):
      n = len(enc.ids)
      ids[row, :n] = enc.ids
      mask[row, :n] = 1
      types[row, :n] = enc.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

  def __call__(self, texts: Sequence[str] | str, pairs: Optional[Sequence[str]] = None,
               length: Optional[int] = None) -> dict[str, np.ndarray]:
    """Tokenizes and pads. A single string counts as a batch of one."""
    if isinstance(texts, str):
      texts = [texts]
      pairs = [pairs] if isinstance(pairs, str) else pairs
    return self.pad(self.encode(texts, pairs), length)
