"""`python -m tpjax.generate` on a tiny random decoder written to a GGUF file.

The expected text comes from the library (load the same file, run `Generator.stream`),
so these tests pin what the command adds: its flags reach the generator, text is
written token by token, it stops at EOS, a seed reproduces a sample, and a bad flag is
one paragraph with exit 2.
"""

import functools
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import gguf
import jax
import pytest

from tests import helpers
from tests import xla_env
from tests import test_decoder
from tpjax import cli
from tpjax.inference import generation
from tpjax.models import decoder
from tpjax.models import decoder_weights
from tpjax.models import pretrained

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROMPT = "hi there"
# Three control tokens (ids 0, 1, 2 as in test_decoder.TINY), then byte-level pieces:
# 'Ġ' is the space, and the printable ASCII characters from '!' on.
_TOKENS = ["<pad>", "<s>", "</s>", "\u0120"] + [chr(c) for c in range(33, 125)]
_CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}:{{ m['content'] }}"
                  "{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}")


def _write(path, state, eos):
  """A tiny GGUF with a byte-level tokenizer whose end-of-sequence id is `eos`."""
  array, string, uint32 = (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING,
                           gguf.GGUFValueType.UINT32)
  assert len(_TOKENS) == test_decoder.TINY.vocab_size
  extra = {"tokenizer.ggml.model": ("gpt2", string),
           "tokenizer.ggml.tokens": (_TOKENS, array, string),
           "tokenizer.ggml.token_type": ([3, 3, 3] + [1] * (len(_TOKENS) - 3), array,
                                         gguf.GGUFValueType.INT32),
           "tokenizer.ggml.bos_token_id": (1, uint32),
           "tokenizer.ggml.eos_token_id": (eos, uint32),
           "tokenizer.ggml.padding_token_id": (0, uint32),
           "tokenizer.chat_template": (_CHAT_TEMPLATE, string)}
  return test_decoder.write_gguf(path, state, test_decoder.TINY, tensor_type="F32",
                                 extra=extra)


@pytest.fixture(scope="module")
def tiny_state():
  model = decoder.DecoderModel(test_decoder.TINY)
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  # Larger weights than the init, so the next token is not a near tie.
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
  return decoder_weights.export_state_dict(params)


@pytest.fixture(scope="module")
def tiny_path(tiny_state, tmp_path_factory):
  return _write(tmp_path_factory.mktemp("generate") / "tiny.gguf", tiny_state, eos=2)


@functools.cache
def _library(path):
  """(Generator, tokenizer) of a GGUF file, one per file so compiles are shared."""
  model, params, tokenizer = pretrained.load_pretrained(path)
  return generation.Generator(model, params, tokenizer), tokenizer


def _library_tokens(path, n, prompt=_PROMPT, chat=False, **sampling):
  """What the library generates for `prompt`, up to and with EOS."""
  gen, tokenizer = _library(path)
  ids = gen.encode_prompt(prompt, chat)
  tokens = [int(t[0]) for t, _ in gen.stream([ids], n, **sampling)]
  return tokens, tokenizer


def _text(tokens, tokenizer, eos):
  if eos in tokens:
    tokens = tokens[:tokens.index(eos)]
  return tokenizer.decode(tokens)


def _generate(*args, in_process=False):
  """`python -m tpjax.generate <args>` as a CompletedProcess: a real process on one CPU
  device, or with `in_process` run by helpers.run_cli (no jax import to pay for), where
  the process itself is not what is tested; a real one exits 0 and one exits 2."""
  if in_process:
    code, stdout, stderr = helpers.run_cli("tpjax.generate", *args)
    return subprocess.CompletedProcess(args, code, stdout, stderr)
  env = dict(os.environ, XLA_FLAGS=xla_env.flags(), JAX_PLATFORMS="cpu")
  env.pop(cli.TRACEBACK_ENV, None)
  return subprocess.run([sys.executable, "-m", "tpjax.generate", *args], cwd=_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_greedy_text_is_the_librarys(tiny_path):
  tokens, tokenizer = _library_tokens(tiny_path, 6)
  result = _generate(f"--model={tiny_path}", f"--prompt={_PROMPT}", "--max_new_tokens=6")
  assert result.returncode == 0, result.stderr
  assert result.stdout == _text(tokens, tokenizer, 2) + "\n"
  assert len(tokens) == 6 and _text(tokens, tokenizer, 2), "the check needs real text"


def test_seeded_sampling_with_chat_is_reproducible(tiny_path):
  sampling = {"temperature": 1.5, "top_p": 0.9}
  tokens, tokenizer = _library_tokens(tiny_path, 8, chat=True, seed=5, **sampling)
  result = _generate(f"--model={tiny_path}", f"--prompt={_PROMPT}", "--chat",
                     "--max_new_tokens=8", "--temperature=1.5", "--top_p=0.9",
                     "--seed=5", in_process=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout == _text(tokens, tokenizer, 2) + "\n"
  # The flags matter: another seed, greedy decoding or no chat template differ.
  assert _library_tokens(tiny_path, 8, chat=True, seed=6, **sampling)[0] != tokens
  assert _library_tokens(tiny_path, 8, chat=True)[0] != tokens
  assert _library_tokens(tiny_path, 8, seed=5, **sampling)[0] != tokens


def test_stops_at_eos(tiny_state, tiny_path, tmp_path):
  tokens, tokenizer = _library_tokens(tiny_path, 8)
  # The same weights with a token greedy decoding reaches at step >= 2 (and not
  # before) declared the end of sequence.
  stop = next(i for i in range(2, 8) if tokens[i] not in tokens[:i])
  eos = tokens[stop]
  path = _write(tmp_path / "eos.gguf", tiny_state, eos=eos)
  # The library stops after yielding EOS; without stop_at_eos it runs on.
  assert _library_tokens(path, 8)[0] == tokens[:stop + 1]
  assert _library_tokens(path, 8, stop_at_eos=False)[0] == tokens
  result = _generate(f"--model={path}", f"--prompt={_PROMPT}", "--max_new_tokens=8",
                     in_process=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout == tokenizer.decode(tokens[:stop]) + "\n"


def test_text_is_written_token_by_token(tiny_path, monkeypatch):
  from tpjax import generate  # pylint: disable=g-import-not-at-top
  tokens, tokenizer = _library_tokens(tiny_path, 5)
  assert 2 not in tokens
  events = []

  class Stdout:

    def write(self, text):
      events.append(("write", text))

    def flush(self):
      events.append(("flush",))

  real_stream = generation.Generator.stream

  def stream(self, *args, **kwargs):
    for tokens, logits in real_stream(self, *args, **kwargs):
      events.append(("token", int(tokens[0])))
      yield tokens, logits

  monkeypatch.setattr(generation.Generator, "stream", stream)
  monkeypatch.setattr(sys, "stdout", Stdout())
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(model=tiny_path, prompt=_PROMPT, max_new_tokens=5):
    generate.main(["generate"])
  # Each token's text is written and flushed before the next token is asked for.
  detok = generate.llama_tokenizer.StreamDecoder(tokenizer)
  want = []
  for token in tokens:
    want += [("token", token), ("write", detok.push(token)), ("flush",)]
  assert events == want + [("write", "\n")]


@pytest.mark.parametrize("args,needle,in_process", [
    (("--prompt=hi", "--temprature=0.5"), "Unknown command line flag 'temprature'", False),
    (("--prompt=hi", "--max_new_tokens=x"), "--max_new_tokens", True),
    (("--prompt=hi", "--top_p=1.5"), "--top_p=1.5 is not allowed", True),
    (("--max_new_tokens=4",), "--prompt is required", True),
])
def test_bad_flag_is_one_paragraph_and_exit_2(args, needle, in_process):
  result = _generate(*args, in_process=in_process)
  assert result.returncode == 2, result.stderr
  assert result.stdout == "" and "Traceback" not in result.stderr
  paragraph = result.stderr.strip()
  assert paragraph.startswith("tpjax.generate: ") and "\n\n" not in paragraph
  assert needle in " ".join(paragraph.split())


def test_flag_values_are_checked():
  from tpjax import generate  # pylint: disable=g-import-not-at-top
  generate.check_flags("hi", 1, 0.0, 1.0)
  for values, needle in (((None, 4, 0.0, 1.0), "--prompt is required"),
                         (("hi", 0, 0.0, 1.0), "--max_new_tokens=0 is not allowed"),
                         (("hi", 4, -1.0, 1.0), "--temperature=-1.0 is not allowed"),
                         (("hi", 4, 1.0, 0.0), "--top_p=0.0 is not allowed")):
    with pytest.raises(ValueError, match=needle):
      generate.check_flags(*values)
