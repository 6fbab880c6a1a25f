"""`python -m tpjax.generate --prompt=TEXT [--chat]`: streams a decoder's answer to stdout.

    python -m tpjax.generate --model=smollm2-135m --prompt="What is JAX?" --chat

Each token's text is written as soon as it is decoded; generation ends at the model's
end-of-sequence token or after --max_new_tokens. A bad flag prints one paragraph and
exits 2, Ctrl-C exits 130 (tpjax/cli.py). The generator itself (bucketed prefill,
KV-cached decode) is tpjax/inference/generation.py.
"""

# cli first: it makes Ctrl-C during the slow imports below exit 130.
from tpjax import cli  # pylint: disable=g-bad-import-order

import os
import sys
import time

from absl import flags
from absl import logging

from tpjax.inference import generation
from tpjax.models import llama_tokenizer

_MODEL = flags.DEFINE_string("model", "smollm2-135m",
                             "Alias, .gguf file or Hugging Face Llama directory.")
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap the prompt in the chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 for greedy decoding.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "auto", ["auto", "bfloat16", "float32"],
    "Matmul operand dtype; auto: bfloat16 where the hardware has a bf16 matrix engine.")


def check_flags(prompt, max_new_tokens: int, temperature: float, top_p: float) -> None:
  """Raises ValueError (a user error: one paragraph, exit 2) for unusable flag values."""
  if prompt is None:
    raise ValueError("--prompt is required, e.g. --prompt=\"What is JAX?\".")
  if max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens={max_new_tokens} is not allowed (an integer of "
                     "at least 1).")
  if temperature < 0:
    raise ValueError(f"--temperature={temperature} is not allowed (0 for greedy "
                     "decoding, or above 0 to sample).")
  if not 0 < top_p <= 1:
    raise ValueError(f"--top_p={top_p} is not allowed (a number above 0 and at most 1).")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments {argv[1:]}; pass the text with --prompt.")
  check_flags(_PROMPT.value, _MAX_NEW.value, _TEMPERATURE.value, _TOP_P.value)
  from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
  model, params, tokenizer = pretrained.load_pretrained(
      _MODEL.value, compute_dtype=_COMPUTE_DTYPE.value)
  gen = generation.Generator(model, params, tokenizer)
  ids = gen.encode_prompt(_PROMPT.value, _CHAT.value)
  detok = llama_tokenizer.StreamDecoder(tokenizer)
  start, count = time.perf_counter(), 0
  for tokens, _ in gen.stream([ids], _MAX_NEW.value, temperature=_TEMPERATURE.value,
                              top_p=_TOP_P.value, seed=_SEED.value):
    token = int(tokens[0])
    if token == model.config.eos_token_id:
      break
    count += 1
    sys.stdout.write(detok.push(token))
    sys.stdout.flush()
  sys.stdout.write("\n")
  logging.info("%d prompt tokens, %d new tokens in %.1f s (including compilation).",
               len(ids), count, time.perf_counter() - start)


if __name__ == "__main__":
  if "xla_cpu_use_xnnpack" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               generation.CPU_XLA_FLAGS).strip()
  cli.run(main, "tpjax.generate")
