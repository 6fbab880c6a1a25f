"""`python -m tpjax.generate --prompt=TEXT [--chat]`: streams a decoder's answer to stdout.

    python -m tpjax.generate --model=smollm2-135m --prompt="What is JAX?" --chat

The generator itself (bucketed prefill, KV-cached decode) is tpjax/inference/generation.py.
"""

import os
import sys
import time

from absl import app
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


def main(argv):
  del argv
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
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + generation.CPU_XLA_FLAGS).strip()
  flags.mark_flag_as_required("prompt")
  app.run(main)
