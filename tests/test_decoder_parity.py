"""Parity of the Flax decoder (SmolLM2-135M from its packaged GGUF) with transformers.

The reference is transformers' LlamaForCausalLM loaded from the same GGUF file with
`gguf_file=` (needs `accelerate`), in float32.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import tpjax  # pylint: disable=g-import-not-at-top
from tpjax.inference import generation  # pylint: disable=g-import-not-at-top
from tpjax.models import decoder  # pylint: disable=g-import-not-at-top
from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top

TOL = 1e-3
NEW_TOKENS = 32
QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves falling in the park.",
    "Explain in two sentences why the sky is blue, for a ten-year-old.",
    "List three uses of a paperclip.",
]
# Text where this tokenizer (like llama.cpp's `smollm` pre-tokenizer and the original
# tokenizer.json: digits split off first) and transformers' GGUF tokenizer (GPT-2 split
# only) agree; see test_whitespace_before_digit_follows_llama_cpp for where they differ.
CORPUS = [
    "Hello world",
    "  leading   spaces\tand\ttabs\n\n\nnewlines  ",
    "Numbers 12345 and 3.14159, 2024-11-23 $1,000,000 a1b2c3",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤖🎉, Ελληνικά",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "x<|endoftext|>y don't won't I'm we'll",
    "   ",
]


@pytest.fixture(scope="module")
def gguf_path():
  return pretrained.resolve("smollm2-135m")


@pytest.fixture(scope="module")
def ours():
  return tpjax.load_pretrained("smollm2-135m")


@pytest.fixture(scope="module")
def reference(gguf_path):
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
      dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
  return model, tokenizer


@pytest.fixture(scope="module")
def prompts(ours):
  _, _, tokenizer = ours
  return [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]))
          for q in QUESTIONS]


def test_tokenizer_matches_transformers(ours, reference):
  _, _, tokenizer = ours
  _, ref_tokenizer = reference
  for text in CORPUS:
    assert tokenizer.encode(text) == ref_tokenizer(text)["input_ids"], text
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
  messages = [{"role": "user", "content": "Hi there"}]
  assert tokenizer.apply_chat_template(messages) == ref_tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)


def test_whitespace_before_digit_follows_llama_cpp(ours):
  _, _, tokenizer = ours
  # llama.cpp (llama-cpp-python 0.3.36 on this GGUF) gives "ab", "  ", "1";
  # transformers' GGUF tokenizer gives "ab", " ", " ", "1" ([369, 216, 216, 33]).
  assert tokenizer.encode("ab  1") == [369, 256, 33]


@pytest.fixture(scope="module")
def forward(ours):
  """The jitted forward pass. The weights go in as an argument: closed over, jax would
  embed all 135M of them in the program as constants, and XLA would spend minutes
  compiling it."""
  model, params, _ = ours
  jitted = jax.jit(lambda p, ids, valid: model.apply(
      {"params": p}, ids, decoder.positions_from_mask(valid), valid))
  return lambda ids, valid: jitted(params, ids, valid)


def _left_pad(rows, length, pad_id):
  ids = np.full((len(rows), length), pad_id, np.int32)
  valid = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, length - len(row):] = row
    valid[i, length - len(row):] = True
  return ids, valid


def test_prefill_logits_match_pytorch(ours, reference, prompts, forward):
  model, _, _ = ours
  ref, _ = reference
  assert len({len(p) for p in prompts}) == len(prompts), "prompts of different lengths"
  # The same padded length as the recompute check below, so one compilation serves both.
  ids, valid = _left_pad(prompts, max(map(len, prompts)) + NEW_TOKENS,
                         model.config.pad_token_id)
  logits = np.asarray(forward(ids, valid))
  positions = np.asarray(decoder.positions_from_mask(jnp.asarray(valid)))
  with torch.no_grad():
    theirs = ref(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(valid).long(),
                 position_ids=torch.from_numpy(positions).long()).logits.numpy()
  diff = float(np.max(np.abs(logits[valid] - theirs[valid])))
  print(f"SmolLM2-135M prefill logits, {len(prompts)} prompts of lengths "
        f"{[len(p) for p in prompts]} left-padded to {ids.shape[1]}: max abs diff "
        f"{diff:.2e} (max |logit| {np.abs(theirs[valid]).max():.1f})")
  assert diff <= TOL


def test_greedy_tokens_match_pytorch_and_cache_matches_recompute(ours, reference, prompts,
                                                                forward):
  model, params, _ = ours
  ref, _ = reference
  gen = generation.Generator(model, params)
  steps = list(gen.stream(prompts, NEW_TOKENS, stop_at_eos=False, keep_logits=True))
  new = [[int(tokens[row]) for tokens, _ in steps] for row in range(len(prompts))]

  # Reference: transformers' greedy search on the same left-padded batch.
  ids, valid = _left_pad(prompts, max(map(len, prompts)), model.config.pad_token_id)
  with torch.no_grad():
    out = ref.generate(torch.from_numpy(ids).long(),
                       attention_mask=torch.from_numpy(valid).long(),
                       max_new_tokens=NEW_TOKENS, do_sample=False,
                       pad_token_id=model.config.pad_token_id)
  eos = model.config.eos_token_id
  for row in range(len(prompts)):
    expected = out[row, ids.shape[1]:].tolist()
    if eos in expected:
      expected = expected[:expected.index(eos) + 1]
    assert new[row][:len(expected)] == expected, f"prompt {row}"

  # Cached decoding == recomputing every prompt + continuation without a cache.
  full_ids, full_valid = _left_pad([p + n for p, n in zip(prompts, new)],
                                   max(map(len, prompts)) + NEW_TOKENS,
                                   model.config.pad_token_id)
  full = np.asarray(forward(full_ids, full_valid))
  worst = 0.0
  for row, prompt in enumerate(prompts):
    first = full_ids.shape[1] - len(prompt) - NEW_TOKENS  # left padding
    for step, (_, logits) in enumerate(steps):
      recomputed = full[row, first + len(prompt) - 1 + step]
      worst = max(worst, float(np.max(np.abs(logits[row] - recomputed))))
  print(f"SmolLM2-135M: {NEW_TOKENS} greedy tokens x {len(prompts)} prompts equal to "
        f"transformers; cached vs recomputed logits max abs diff {worst:.2e}")
  assert worst <= TOL
