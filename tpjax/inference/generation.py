"""Text generation with the Flax decoder: bucketed prefill, then a KV-cached decode loop.

Library:

    model, params, tokenizer = tpjax.load_pretrained("smollm2-135m")
    gen = generation.Generator(model, params, tokenizer)
    texts = gen.generate_text(["The capital of France is"], max_new_tokens=16)

Command line (streams the answer to stdout):

    python -m tpjax.generate --model=smollm2-135m --prompt="What is JAX?" --chat

Prompts are padded (left by default, right on request) to a bucket length, so a new
prompt length reuses the compiled prefill of its bucket; position ids count only real
tokens, so both paddings give the same positions. The decode step appends one token per
row to every layer's cache (tpjax.models.decoder.LayerCache) at the cache's own fill
level and is compiled once per (batch, cache capacity, sampling settings).
"""

from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tpjax.models import decoder as decoder_lib
from tpjax.models import llama_tokenizer
from tpjax.models import precision

# Prompt lengths are padded up to the next of these (then to multiples of the last).
BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
           4096, 6144, 8192)
# Cache capacities are multiples of this, so max_new_tokens rarely forces a recompile.
CACHE_STEP = 256
# XLA flags the command line sets for CPU runs (before JAX starts its backend):
# XNNPACK matmuls made prefill about 1.3x faster on a 2-core x86 machine.
CPU_XLA_FLAGS = "--xla_cpu_use_xnnpack=true"


class ContextLengthError(ValueError):
  """A prompt (plus the tokens to generate) that does not fit the model's context."""


def bucket_length(n: int, buckets: Sequence[int] = BUCKETS) -> int:
  """The smallest bucket >= n (multiples of the largest bucket beyond it)."""
  for b in buckets:
    if n <= b:
      return b
  return -(-n // buckets[-1]) * buckets[-1]


def sample(logits: jax.Array, rng: jax.Array, temperature: float,
           top_p: float) -> jax.Array:
  """Next tokens: greedy when temperature == 0, else nucleus (top-p) sampling.

  Args:
    logits: <float32>[batch, vocab].
    rng: PRNG key (unused when greedy).
    temperature: 0 for argmax, else the softmax temperature.
    top_p: keep the smallest set of tokens whose probability reaches top_p.
  Returns:
    <int32>[batch].
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # smallest kept logit
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def last_valid_index(valid: jax.Array) -> jax.Array:
  """<bool>[batch, seq] -> <int32>[batch], the index of each row's last valid slot."""
  seq = valid.shape[1]
  return (seq - 1 - jnp.argmax(valid[:, ::-1], axis=1)).astype(jnp.int32)


class Generator:
  """Compiled prefill and decode steps for one model and its parameters."""

  def __init__(self, model: decoder_lib.DecoderModel, params,
               tokenizer: Optional[llama_tokenizer.DecoderTokenizer] = None,
               buckets: Sequence[int] = BUCKETS, cache_step: int = CACHE_STEP):
    self.model = model
    # Matmul weights (the tied LM head's embedding too) stored in the compute dtype:
    # decode reads every weight once per token, so this halves its bytes in bfloat16.
    self.params = precision.cast_kernels(params, model.config.compute_dtype,
                                         ("kernel", "embedding"))
    self.tokenizer = tokenizer
    self.buckets = tuple(buckets)
    self.cache_step = cache_step
    self._prefill = jax.jit(self._prefill_impl,
                            static_argnames=("capacity", "temperature", "top_p"))
    self._step = jax.jit(self._step_impl, static_argnames=("temperature", "top_p"),
                         donate_argnames=("caches",))

  def _prefill_impl(self, params, ids, valid, rng, capacity, temperature, top_p):
    positions = decoder_lib.positions_from_mask(valid)
    variables = {"params": params}
    hidden, kv = self.model.apply(variables, ids, positions, valid,
                                  method=decoder_lib.DecoderModel.prefill)
    last = last_valid_index(valid)
    hidden_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    logits = self.model.apply(variables, hidden_last,
                              method=decoder_lib.DecoderModel.logits)
    caches = decoder_lib.caches_from_prefill(kv, positions, valid, capacity)
    next_positions = jnp.sum(valid, axis=1).astype(jnp.int32)
    return sample(logits, rng, temperature, top_p), logits, caches, next_positions

  def _step_impl(self, params, tokens, positions, caches, rng, temperature, top_p):
    logits, caches = self.model.apply({"params": params}, tokens[:, None],
                                      positions[:, None], caches,
                                      method=decoder_lib.DecoderModel.decode)
    logits = logits[:, 0]
    return sample(logits, rng, temperature, top_p), logits, caches

  def pad(self, prompts: Sequence[Sequence[int]], padding: str = "left"
          ) -> tuple[np.ndarray, np.ndarray]:
    """Pads token lists to their bucket: (<int32>[batch, bucket], <bool>[batch, bucket])."""
    if padding not in ("left", "right"):
      raise ValueError(f"padding must be 'left' or 'right', got {padding!r}.")
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("Every prompt needs at least one token.")
    seq = bucket_length(max(len(p) for p in prompts), self.buckets)
    pad_id = self.model.config.pad_token_id or 0
    ids = np.full((len(prompts), seq), pad_id, np.int32)
    valid = np.zeros((len(prompts), seq), bool)
    for row, p in enumerate(prompts):
      where = slice(seq - len(p), seq) if padding == "left" else slice(0, len(p))
      ids[row, where] = p
      valid[row, where] = True
    return ids, valid

  def check_length(self, prompt_length: int, max_new_tokens: int) -> None:
    context = self.model.config.max_position_embeddings
    if prompt_length + max_new_tokens > context:
      raise ContextLengthError(
          f"A prompt of {prompt_length} tokens plus max_new_tokens={max_new_tokens} "
          f"needs {prompt_length + max_new_tokens} positions; the model's context "
          f"supports {context}.")

  def prefill(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, rng: jax.Array,
              temperature: float = 0.0, top_p: float = 1.0, padding: str = "left"):
    """Runs the prompts (padded to their bucket) and fills every layer's cache.

    Returns:
      (first new tokens <int32>[batch], their logits <float32>[batch, vocab],
      per-layer caches with room for max_new_tokens more, next position <int32>[batch]).
    Raises:
      ContextLengthError: if the longest prompt plus max_new_tokens exceeds the context.
    """
    self.check_length(max(len(p) for p in prompts), max_new_tokens)
    ids, valid = self.pad(prompts, padding)
    capacity = -(-(ids.shape[1] + max_new_tokens) // self.cache_step) * self.cache_step
    return self._prefill(self.params, ids, valid, rng, capacity=capacity,
                         temperature=float(temperature), top_p=float(top_p))

  def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             padding: str = "left", stop_at_eos: bool = True,
             keep_logits: bool = False) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """Yields each step's tokens for a batch of tokenised prompts.

    Args:
      prompts: token ids per prompt (any lengths).
      max_new_tokens: steps to run at most.
      temperature: 0 for greedy decoding.
      top_p: nucleus mass when sampling.
      seed: PRNG seed for sampling.
      padding: "left" or "right".
      stop_at_eos: stop once every row has produced EOS.
      keep_logits: also yield the logits each token was chosen from.
    Yields:
      (<int32>[batch] tokens, <float32>[batch, vocab] logits or None).
    """
    rng = jax.random.PRNGKey(seed)
    sampling = {"temperature": float(temperature), "top_p": float(top_p)}
    tokens, logits, caches, positions = self.prefill(
        prompts, max_new_tokens, jax.random.fold_in(rng, 0), padding=padding, **sampling)
    eos = self.model.config.eos_token_id
    done = np.zeros(len(prompts), bool)
    for step in range(max_new_tokens):
      host_tokens = np.asarray(tokens)
      yield host_tokens, (np.asarray(logits) if keep_logits else None)
      if eos is not None:
        done |= host_tokens == eos
      if step + 1 == max_new_tokens or (stop_at_eos and done.all()):
        return
      tokens, logits, caches = self._step(
          self.params, tokens, positions + step, caches,
          jax.random.fold_in(rng, step + 1), **sampling)

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               **kwargs) -> list[list[int]]:
    """New token ids per prompt, up to (not including) EOS. kwargs as in `stream`."""
    out = [[] for _ in prompts]
    finished = [False] * len(prompts)
    eos = self.model.config.eos_token_id
    for tokens, _ in self.stream(prompts, max_new_tokens, **kwargs):
      for row, t in enumerate(tokens.tolist()):
        if finished[row]:
          continue
        if t == eos:
          finished[row] = True
        else:
          out[row].append(t)
    return out

  def encode_prompt(self, prompt: str, chat: bool = False) -> list[int]:
    """Token ids of a prompt, wrapped in the chat template when `chat`."""
    if self.tokenizer is None:
      raise ValueError("This Generator has no tokenizer; pass token ids instead.")
    if chat:
      prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    return self.tokenizer.encode(prompt)

  def generate_text(self, prompts: Sequence[str], max_new_tokens: int,
                    chat: bool = False, **kwargs) -> list[str]:
    """Generated text per prompt. kwargs as in `stream`."""
    ids = [self.encode_prompt(p, chat) for p in prompts]
    return [self.tokenizer.decode(t) for t in self.generate(ids, max_new_tokens, **kwargs)]
