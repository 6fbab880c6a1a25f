"""Flax Linen causal decoder for the Llama family (SmolLM2, Llama 2/3-style checkpoints).

RMSNorm, rotary position embeddings (RoPE) with the checkpoint's base, grouped-query
attention and a SwiGLU MLP. Module and parameter names mirror the Hugging Face Llama
checkpoints (`model/layers/3/self_attn/q_proj/kernel`, `model/embed_tokens/embedding`,
`model/norm/weight`, `lm_head/kernel` unless the head is tied to the embeddings), so
weight import is a rename and a transpose.

Every token carries an explicit position id: RoPE and the causal mask both read the
position ids, never the index of a slot. A token pruned out of a sequence therefore does
not shift the positions of the ones that stay (SDTP, methods.md section 3).

The KV cache is one `LayerCache` per layer, each with its own capacity, its own position
ids and validity mask and its own fill level, so a later layer may hold fewer tokens than
an earlier one. Within one layer's cache the valid slots must be in increasing position
order (pruning keeps tokens in their original order); prefill relies on this to skip the
key blocks that lie entirely in a query block's future.

Pruning hooks (tpjax/pruning/sdtp_decoder.py): `layer_forward` / `layer_decode` run
one layer on its own, so a pipeline can score and drop tokens between layers (one
compiled layer per input shape serves every layer); `attend`'s `k_keep` simulates
pruning at full length with the policy mask; `caches_from_layers` builds caches whose
sizes differ per layer.

Typical use (see tpjax/inference/generation.py):

    hidden, kv = model.apply(variables, ids, positions, valid, method=model.prefill)
    caches = decoder.caches_from_prefill(kv, positions, valid, capacity)
    logits, caches = model.apply(variables, token, position, caches,
                                 method=model.decode)
"""

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from tpjax.models import precision

SUPPORTED_ARCHITECTURES = ("llama",)
# Query rows per attention block in prefill; key blocks past a query block are skipped.
PREFILL_BLOCK = 512
_NEG_INF = -1e30


class ConfigError(ValueError):
  """A checkpoint configuration tpjax cannot run; the message says what is supported."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and options of a Llama-family decoder (frozen, so hashable for jit)."""

  model_type: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: Optional[int] = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  hidden_act: str = "silu"
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  initializer_range: float = 0.02
  # Dot operand dtype (tpjax/models/precision.py); a run-time choice, not saved.
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.model_type not in SUPPORTED_ARCHITECTURES:
      raise ConfigError(f"Architecture {self.model_type!r} is not supported; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
    if self.hidden_act != "silu":
      raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; supported: silu.")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple "
                        f"of num_key_value_heads {self.num_key_value_heads}.")
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by "
                          f"num_attention_heads {self.num_attention_heads}.")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.head_dim % 2:
      raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}.")
    precision.check(self.compute_dtype)

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_attention_heads // self.num_key_value_heads

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> "DecoderConfig":
    """Reads a Hugging Face Llama `config.json` dict; unknown keys are ignored.

    Raises:
      ConfigError: for another architecture, or RoPE scaling, biases or sliding
        windows, which this decoder does not implement.
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
      raise ConfigError(f"config.json has model_type {model_type!r}; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
    rope = dict(d.get("rope_parameters") or {})
    scaling = d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
      raise ConfigError(f"RoPE scaling {rope_type!r} is not supported; supported: default.")
    for flag in ("attention_bias", "mlp_bias"):
      if d.get(flag):
        raise ConfigError(f"{flag}=True is not supported; supported: Llama without biases.")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    theta = rope.get("rope_theta", d.get("rope_theta"))
    if theta is not None:
      kwargs["rope_theta"] = float(theta)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if isinstance(kwargs.get(key), (list, tuple)):
        kwargs[key] = kwargs[key][0]
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str) -> "DecoderConfig":
    with open(path, encoding="utf-8") as f:
      return cls.from_hf_dict(json.load(f))

  def to_hf_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    del d["compute_dtype"]
    d["architectures"] = ["LlamaForCausalLM"]
    return d


@flax.struct.dataclass
class LayerCache:
  """One layer's keys and values, with the position and validity of every slot.

  Slots [0, length) are written; a written slot may still be invalid (padding, or a
  token pruned away). Keys are stored after RoPE.
  """
  keys: jax.Array       # <float32>[batch, kv_heads, capacity, head_dim]
  values: jax.Array     # <float32>[batch, kv_heads, capacity, head_dim]
  positions: jax.Array  # <int32>[batch, capacity]
  valid: jax.Array      # <bool>[batch, capacity]
  length: jax.Array     # <int32>[] slots written so far; the next token goes here

  @property
  def capacity(self) -> int:
    return self.keys.shape[2]


def new_cache(keys: jax.Array, values: jax.Array, positions: jax.Array, valid: jax.Array,
              capacity: int) -> LayerCache:
  """A cache of `capacity` slots holding the given tokens in its first slots.

  Args:
    keys: <float32>[batch, kv_heads, n, head_dim], after RoPE.
    values: <float32>[batch, kv_heads, n, head_dim].
    positions: <int32>[batch, n].
    valid: <bool>[batch, n].
    capacity: total slots, >= n.
  Returns:
    LayerCache with length n.
  """
  n = keys.shape[2]
  if capacity < n:
    raise ValueError(f"Cache capacity {capacity} is smaller than the {n} tokens to store.")
  pad = capacity - n
  return LayerCache(
      keys=jnp.pad(keys, ((0, 0), (0, 0), (0, pad), (0, 0))),
      values=jnp.pad(values, ((0, 0), (0, 0), (0, pad), (0, 0))),
      positions=jnp.pad(positions.astype(jnp.int32), ((0, 0), (0, pad))),
      valid=jnp.pad(valid.astype(bool), ((0, 0), (0, pad))),
      length=jnp.asarray(n, jnp.int32))


def caches_from_prefill(kv: Sequence[tuple[jax.Array, jax.Array]], positions: jax.Array,
                        valid: jax.Array, capacity: int) -> tuple[LayerCache, ...]:
  """Per-layer caches from `DecoderModel.prefill`'s keys and values (all layers full).

  Args:
    kv: one (keys, values) pair per layer, each <float32>[batch, kv_heads, seq, head_dim].
    positions: <int32>[batch, seq].
    valid: <bool>[batch, seq].
    capacity: slots per layer (prompt plus room for the tokens to generate).
  Returns:
    One LayerCache per layer.
  """
  return tuple(new_cache(k, v, positions, valid, capacity) for k, v in kv)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the Hugging Face layout (the two halves of a head rotate).

  Args:
    x: <float32>[batch, seq, heads, head_dim].
    positions: <int32>[batch, seq].
    theta: the RoPE base.
  Returns:
    <float32>[batch, seq, heads, head_dim].
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, 2 * half, 2, dtype=jnp.float32) / (2 * half)))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, half]
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attend(q: jax.Array, keys: jax.Array, values: jax.Array, q_positions: jax.Array,
           k_positions: jax.Array, k_valid: jax.Array,
           k_keep: Optional[jax.Array] = None, dtype: str = "float32") -> jax.Array:
  """Grouped-query attention where key j is visible to query i iff it is valid and
  position_j <= position_i.

  With `k_keep` (M, the SDTP/DynamicViT policy), attention is the policy softmax
  A_ij = exp(a_ij) G_ij / sum_k exp(a_ik) G_ik with G_ij = M_j, and G_ii = 1 (a query
  always sees itself; "itself" is the key with its position). With a binary M this
  equals attention over the kept keys only, so it simulates pruning at full length.

  Args:
    q: <float32>[batch, q_len, kv_heads, groups, head_dim], after RoPE.
    keys: <float32>[batch, kv_heads, k_len, head_dim], after RoPE.
    values: <float32>[batch, kv_heads, k_len, head_dim].
    q_positions: <int32>[batch, q_len].
    k_positions: <int32>[batch, k_len].
    k_valid: <bool>[batch, k_len].
    k_keep: None, or <float32>[batch, k_len] keep mask M in [0, 1].
    dtype: the compute dtype of the two matmuls (float32 accumulation).
  Returns:
    <float32>[batch, q_len, kv_heads, groups, head_dim]. A query that sees no key
    (padding) gets a finite, meaningless output.
  """
  batch, q_len, kv_heads, groups, head_dim = q.shape
  # [batch, kv_heads, groups * q_len, head_dim]: one plain batched matmul per KV head.
  rows = (q * head_dim ** -0.5).transpose(0, 2, 3, 1, 4).reshape(
      batch, kv_heads, groups * q_len, head_dim)
  logits = precision.matmul(rows, keys.swapaxes(-1, -2), dtype)
  visible = k_valid[:, None, :] & (k_positions[:, None, :] <= q_positions[:, :, None])
  visible = jnp.tile(visible, (1, groups, 1))[:, None]  # rows are (group, query)
  logits = jnp.where(visible, logits, _NEG_INF)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  if k_keep is not None:
    itself = k_positions[:, None, :] == q_positions[:, :, None]
    policy = jnp.where(itself, 1.0, k_keep[:, None, :].astype(weights.dtype))
    weights = weights * jnp.tile(policy, (1, groups, 1))[:, None]
  # Normalising after the value matmul divides head_dim, not k_len, numbers per row.
  out = precision.matmul(weights, values, dtype) / jnp.sum(weights, axis=-1, keepdims=True)
  return out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)


def blocked_causal_attend(q, keys, values, positions, valid, keep=None,
                          block: int = PREFILL_BLOCK, dtype: str = "float32") -> jax.Array:
  """`attend` of a sequence on itself, skipping key blocks after each query block.

  Valid slots must be in increasing position order, so keys after a query block's last
  slot can never be visible to it. Shapes as in `attend`, with q_len == k_len.
  """
  seq = q.shape[1]
  if seq <= block:
    return attend(q, keys, values, positions, positions, valid, keep, dtype)
  outs = []
  for start in range(0, seq, block):
    end = min(start + block, seq)
    outs.append(attend(q[:, start:end], keys[:, :, :end], values[:, :, :end],
                       positions[:, start:end], positions[:, :end], valid[:, :end],
                       None if keep is None else keep[:, :end], dtype))
  return jnp.concatenate(outs, axis=1)


class RMSNorm(nn.Module):
  """x / rms(x) * weight, computed in float32."""
  eps: float

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (weight * x32).astype(x.dtype)


def _dense(features: int, config: DecoderConfig, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=False, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range),
                  **precision.dense_options(config.compute_dtype))


class SelfAttention(nn.Module):
  """`self_attn`: q/k/v/o projections, RoPE and grouped-query attention."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.q_proj = _dense(cfg.num_attention_heads * cfg.head_dim, cfg, "q_proj")
    self.k_proj = _dense(cfg.num_key_value_heads * cfg.head_dim, cfg, "k_proj")
    self.v_proj = _dense(cfg.num_key_value_heads * cfg.head_dim, cfg, "v_proj")
    self.o_proj = _dense(cfg.hidden_size, cfg, "o_proj")

  def _qkv(self, x, positions):
    cfg = self.config
    batch, seq, _ = x.shape
    q = self.q_proj(x).reshape(batch, seq, cfg.num_attention_heads, cfg.head_dim)
    k = self.k_proj(x).reshape(batch, seq, cfg.num_key_value_heads, cfg.head_dim)
    v = self.v_proj(x).reshape(batch, seq, cfg.num_key_value_heads, cfg.head_dim)
    q = rope(q, positions, cfg.rope_theta).reshape(
        batch, seq, cfg.num_key_value_heads, cfg.num_groups, cfg.head_dim)
    k = rope(k, positions, cfg.rope_theta).transpose(0, 2, 1, 3)
    return q, k, v.transpose(0, 2, 1, 3)

  def _out(self, context):
    batch, seq = context.shape[:2]
    return self.o_proj(context.reshape(batch, seq, -1))

  def __call__(self, x, positions, valid, keep=None):
    """Causal self-attention over the given tokens (prefill, or a cache-free forward).

    Args:
      x: <float32>[batch, seq, hidden], normalised.
      positions: <int32>[batch, seq].
      valid: <bool>[batch, seq].
      keep: None, or <float32>[batch, seq] SDTP keep mask (see `attend`).
    Returns:
      (<float32>[batch, seq, hidden], (keys, values) each
      <float32>[batch, kv_heads, seq, head_dim], keys after RoPE).
    """
    q, k, v = self._qkv(x, positions)
    context = blocked_causal_attend(q, k, v, positions, valid, keep,
                                    dtype=self.config.compute_dtype)
    return self._out(context), (k, v)

  def decode(self, x, positions, cache: LayerCache):
    """Appends the new tokens to `cache` and attends over every valid slot.

    Args:
      x: <float32>[batch, new, hidden], normalised.
      positions: <int32>[batch, new].
      cache: this layer's cache, with room for `new` more slots.
    Returns:
      (<float32>[batch, new, hidden], the updated LayerCache).
    """
    q, k, v = self._qkv(x, positions)
    at = cache.length
    cache = LayerCache(
        keys=jax.lax.dynamic_update_slice(cache.keys, k, (0, 0, at, 0)),
        values=jax.lax.dynamic_update_slice(cache.values, v, (0, 0, at, 0)),
        positions=jax.lax.dynamic_update_slice(
            cache.positions, positions.astype(jnp.int32), (0, at)),
        valid=jax.lax.dynamic_update_slice(
            cache.valid, jnp.ones(positions.shape, bool), (0, at)),
        length=at + x.shape[1])
    context = attend(q, cache.keys, cache.values, positions, cache.positions, cache.valid,
                     dtype=self.config.compute_dtype)
    return self._out(context), cache


class MLP(nn.Module):
  """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    gate = _dense(cfg.intermediate_size, cfg, "gate_proj")(x)
    up = _dense(cfg.intermediate_size, cfg, "up_proj")(x)
    return _dense(cfg.hidden_size, cfg, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.input_layernorm = RMSNorm(cfg.rms_norm_eps)
    self.self_attn = SelfAttention(cfg)
    self.post_attention_layernorm = RMSNorm(cfg.rms_norm_eps)
    self.mlp = MLP(cfg)

  def _feed_forward(self, x):
    return x + self.mlp(self.post_attention_layernorm(x))

  def __call__(self, x, positions, valid, keep=None):
    """Shapes as in SelfAttention.__call__; returns (hidden, (keys, values))."""
    attn, kv = self.self_attn(self.input_layernorm(x), positions, valid, keep)
    return self._feed_forward(x + attn), kv

  def decode(self, x, positions, cache: LayerCache):
    """Shapes as in SelfAttention.decode; returns (hidden, LayerCache)."""
    attn, cache = self.self_attn.decode(self.input_layernorm(x), positions, cache)
    return self._feed_forward(x + attn), cache


class LayerStack(nn.Module):
  """`model/layers/<i>`."""
  config: DecoderConfig

  def setup(self):
    self.layers = [DecoderLayer(self.config, name=str(i))
                   for i in range(self.config.num_hidden_layers)]


class LlamaModel(nn.Module):
  """`model`: token embeddings, the layers and the final norm."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size,
        embedding_init=nn.initializers.normal(cfg.initializer_range))
    self.layers = LayerStack(cfg)
    self.norm = RMSNorm(cfg.rms_norm_eps)


class DecoderModel(nn.Module):
  """Llama-family causal LM. Methods are applied with `model.apply(..., method=...)`."""
  config: DecoderConfig

  def setup(self):
    self.model = LlamaModel(self.config)
    if not self.config.tie_word_embeddings:
      self.lm_head = _dense(self.config.vocab_size, self.config, "lm_head")

  @property
  def layers(self) -> list[DecoderLayer]:
    return self.model.layers.layers

  def logits(self, hidden):
    """<float32>[..., hidden] (after the final norm) -> <float32>[..., vocab]."""
    if self.config.tie_word_embeddings:
      return precision.matmul(hidden, self.model.embed_tokens.embedding.T,
                              self.config.compute_dtype)
    return self.lm_head(hidden)

  def embed(self, input_ids):
    """<int32>[batch, seq] -> <float32>[batch, seq, hidden] (the first layer's input)."""
    return self.model.embed_tokens(input_ids).astype(jnp.float32)

  def head(self, x):
    """Last layer's output <float32>[..., hidden] -> logits <float32>[..., vocab]."""
    return self.logits(self.model.norm(x))

  def prefill(self, input_ids, positions, valid):
    """Runs a prompt through every layer, keeping each layer's keys and values.

    Args:
      input_ids: <int32>[batch, seq].
      positions: <int32>[batch, seq] position id of every token.
      valid: <bool>[batch, seq], False for padding.
    Returns:
      (final-normed hidden states <float32>[batch, seq, hidden], per-layer tuple of
      (keys, values) each <float32>[batch, kv_heads, seq, head_dim]).
    """
    x = self.embed(input_ids)
    kv = []
    for layer in self.layers:
      x, layer_kv = layer(x, positions, valid)
      kv.append(layer_kv)
    return self.model.norm(x), tuple(kv)

  def decode(self, input_ids, positions, caches: Sequence[LayerCache]):
    """Appends new tokens to the per-layer caches; returns their logits.

    Args:
      input_ids: <int32>[batch, new].
      positions: <int32>[batch, new].
      caches: one LayerCache per layer.
    Returns:
      (<float32>[batch, new, vocab], updated caches).
    """
    x = self.embed(input_ids)
    new_caches = []
    for layer, cache in zip(self.layers, caches):
      x, cache = layer.decode(x, positions, cache)
      new_caches.append(cache)
    return self.logits(self.model.norm(x)), tuple(new_caches)

  def __call__(self, input_ids, positions=None, valid=None):
    """Full-sequence logits without a cache.

    Args:
      input_ids: <int32>[batch, seq].
      positions: <int32>[batch, seq] or None (0, 1, ... along the sequence).
      valid: <bool>[batch, seq] or None (all valid).
    Returns:
      <float32>[batch, seq, vocab].
    """
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    if valid is None:
      valid = jnp.ones(input_ids.shape, bool)
    hidden, _ = self.prefill(input_ids, positions, valid)
    return self.logits(hidden)


def layer_params(params: dict, index: int) -> dict:
  """Layer `index`'s parameters out of the whole model's."""
  return params["model"]["layers"][str(index)]


def layer_forward(config: DecoderConfig, params: dict, x: jax.Array, positions: jax.Array,
                  valid: jax.Array, keep: Optional[jax.Array] = None):
  """One decoder layer on its own, for per-layer (pruning) pipelines.

  Every layer has the same structure, so one jitted `layer_forward` per input shape
  serves all layers: only `params` (from `layer_params`) changes.

  Args:
    config: the decoder's config.
    params: one layer's parameters.
    x: <float32>[batch, seq, hidden], the layer's input.
    positions: <int32>[batch, seq] original position ids.
    valid: <bool>[batch, seq].
    keep: None, or <float32>[batch, seq] SDTP keep mask (see `attend`).
  Returns:
    (<float32>[batch, seq, hidden], (keys, values) each
    <float32>[batch, kv_heads, seq, head_dim]).
  """
  return DecoderLayer(config).apply({"params": params}, x, positions, valid, keep)


def layer_decode(config: DecoderConfig, params: dict, x: jax.Array, positions: jax.Array,
                 cache: LayerCache):
  """One decoder layer's cached step on its own (see `layer_forward`); shapes as in
  `SelfAttention.decode`. Returns (hidden, the updated LayerCache)."""
  return DecoderLayer(config).apply({"params": params}, x, positions, cache,
                                    method=DecoderLayer.decode)


def caches_from_layers(kv: Sequence[tuple[jax.Array, jax.Array]],
                       positions: Sequence[jax.Array], valid: Sequence[jax.Array],
                       extra: int) -> tuple[LayerCache, ...]:
  """Per-layer caches when each layer kept its own tokens (pruned prefill).

  Args:
    kv: per layer (keys, values), each <float32>[batch, kv_heads, n_l, head_dim].
    positions: per layer <int32>[batch, n_l], the original positions of its tokens.
    valid: per layer <bool>[batch, n_l].
    extra: slots to add to every layer for the tokens still to decode.
  Returns:
    One LayerCache per layer, layer l with capacity n_l + extra and length n_l: the
    next token is written after that layer's own surviving tokens.
  """
  return tuple(new_cache(k, v, p, m, k.shape[2] + extra)
               for (k, v), p, m in zip(kv, positions, valid))


def init_params(model: DecoderModel, rng: jax.Array) -> dict:
  """Fresh parameters of `model`, initialised on a dummy batch."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return model.init(rng, ids)["params"]


def positions_from_mask(valid: jax.Array) -> jax.Array:
  """Position ids counting only valid tokens (works for left and right padding).

  Args:
    valid: <bool>[batch, seq].
  Returns:
    <int32>[batch, seq]; padding slots get the position of the nearest earlier token
    (or 0), which is harmless because they are masked as keys.
  """
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)
