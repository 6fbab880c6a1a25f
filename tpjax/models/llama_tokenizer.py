"""Decoder tokenizer built from GGUF metadata (or a Hugging Face directory), chat template.

A GGUF file has no tokenizer.json: it stores the vocabulary (`tokenizer.ggml.tokens`),
the BPE merges, each token's type (3 = control, i.e. special) and the name of
llama.cpp's pre-tokenizer (`tokenizer.ggml.pre`). This module rebuilds the same
byte-level BPE in Hugging Face `tokenizers` and renders the checkpoint's Jinja chat
template.
"""

import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers

# tokenizer.ggml.model values this module can build, and llama.cpp pre-tokenizers.
SUPPORTED_MODELS = ("gpt2",)
SUPPORTED_PRE = ("smollm", "gpt2", "default")
_CONTROL = 3
_USER_DEFINED = 4


class TokenizerError(ValueError):
  """Tokenizer metadata tpjax cannot rebuild; the message says what is supported."""


def _pre_tokenizer(pre: str):
  """llama.cpp's named pre-tokenizer as a `tokenizers` pre-tokenizer."""
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre == "smollm":  # every digit on its own, then GPT-2's split
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  return byte_level


class DecoderTokenizer:
  """Text <-> ids for a decoder LLM, with its special tokens and chat template."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, bos_token_id: Optional[int],
               eos_token_id: Optional[int], pad_token_id: Optional[int],
               add_bos: bool = False, chat_template: Optional[str] = None):
    self._tok = tokenizer
    self.bos_token_id = bos_token_id
    self.eos_token_id = eos_token_id
    self.pad_token_id = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
    self.add_bos = add_bos
    self.chat_template = chat_template

  @classmethod
  def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> "DecoderTokenizer":
    """Builds the tokenizer from a GGUF file's `tokenizer.*` metadata.

    Raises:
      TokenizerError: for a tokenizer model or pre-tokenizer not in SUPPORTED_*.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_MODELS:
      raise TokenizerError(f"GGUF tokenizer model {kind!r} is not supported; supported: "
                           f"{', '.join(SUPPORTED_MODELS)} (byte-level BPE).")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_PRE:
      raise TokenizerError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
                           f"{', '.join(SUPPORTED_PRE)}.")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([
        tokenizers.AddedToken(t, special=True, normalized=False)
        for t, kind_ in zip(tokens, types) if kind_ == _CONTROL])
    tok.add_tokens([
        tokenizers.AddedToken(t, special=False, normalized=False)
        for t, kind_ in zip(tokens, types) if kind_ == _USER_DEFINED])
    return cls(tok,
               bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
               eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
               pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
               add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
               chat_template=metadata.get("tokenizer.chat_template"))

  @classmethod
  def from_directory(cls, directory: str) -> "DecoderTokenizer":
    """Reads tokenizer.json (+ tokenizer_config.json) of a Hugging Face directory."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
      raise TokenizerError(f"No tokenizer.json in {directory!r}.")
    tok = tokenizers.Tokenizer.from_file(path)
    config = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
      with open(config_path, encoding="utf-8") as f:
        config = json.load(f)

    def token_id(name):
      token = config.get(name)
      if isinstance(token, dict):
        token = token.get("content")
      return tok.token_to_id(token) if token else None

    return cls(tok, token_id("bos_token"), token_id("eos_token"), token_id("pad_token"),
               add_bos=bool(config.get("add_bos_token", False)),
               chat_template=config.get("chat_template"))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)

  def id_to_token(self, index: int) -> Optional[str]:
    return self._tok.id_to_token(index)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Ids of `text`; BOS first when the checkpoint asks for it. Special tokens
    written in the text (e.g. `<|im_start|>`) become their single ids."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if add_special_tokens and self.add_bos and self.bos_token_id is not None:
      ids = [self.bos_token_id] + ids
    return ids

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = True) -> list[list[int]]:
    return [self.encode(t, add_special_tokens) for t in texts]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """Renders messages ([{"role": ..., "content": ...}]) with the checkpoint's
    Jinja template, as transformers does (trim_blocks, lstrip_blocks)."""
    if not self.chat_template:
      raise TokenizerError("This checkpoint has no chat template.")
    from jinja2 import sandbox  # pylint: disable=g-import-not-at-top
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(self.chat_template)
    special = lambda i: self._tok.id_to_token(i) if i is not None else ""
    return template.render(messages=list(messages),
                           add_generation_prompt=add_generation_prompt,
                           bos_token=special(self.bos_token_id),
                           eos_token=special(self.eos_token_id))


class StreamDecoder:
  """Turns ids arriving one at a time into text pieces, holding back incomplete UTF-8."""

  def __init__(self, tokenizer: DecoderTokenizer):
    self._tokenizer = tokenizer
    self._ids = []
    self._emitted = 0

  def push(self, token_id: int) -> str:
    """Adds one id; returns the newly completed text (possibly empty)."""
    self._ids.append(int(token_id))
    text = self._tokenizer.decode(self._ids)
    if text.endswith("\ufffd"):
      return ""
    piece, self._emitted = text[self._emitted:], len(text)
    return piece
