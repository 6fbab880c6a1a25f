"""Flax Linen encoder for the BERT and RoBERTa families, with classification heads.

Module names mirror the Hugging Face checkpoints (`encoder/layer/3/attention/self/query`)
so that weight import is a rename and a transpose.

Pruning plugs in through `prune_fn`, called after every layer's attention:

    prune_fn(layer_index, received, token_mask, hidden, lengths, protected)
        -> (token_mask, scale, aux)

    received         <float32>[batch, seq]  attention each token receives from the
                     live query rows, mean over heads (`attention_received` of the
                     pre-dropout probabilities); a vector, so the inference engine
                     can compute it at a narrower width than the input's
    token_mask       <float32>[batch, seq]  1 live, 0 gone; soft values in between act
                     as soft key weights in the next layer's attention
    hidden           <float32>[batch, seq, hidden]  the layer's post-attention state
    lengths          <int32>[batch]  real tokens per example before any pruning
    protected        <bool>[batch, seq]  [CLS] and [SEP] tokens (`protected_tokens`),
                     for methods that never prune them
    scale            <float32>[batch, seq] or None, multiplies the layer's output
    aux              any pytree, collected per layer in `EncoderOutput.prune_aux`

The returned mask is used as the attention key mask of every later layer and, in hard
pruning, marks which tokens the layer's FFN and later layers still process.

Keys are weighted by the mask through an additive log bias (`key_bias`) unless an
`attention_softmax(logits, token_mask) -> probs` is given (SDTP's policy softmax,
`tpjax.pruning.sdtp.policy_softmax`, whose gradient reaches keys whose weight is 0).
"""

from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from tpjax.models import config as config_lib
from tpjax.models import precision

PruneFn = Callable[[int, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array],
                   tuple[jax.Array, Optional[jax.Array], Any]]

_NEG_INF = -1e9


@flax.struct.dataclass
class EncoderOutput:
  """What the encoder returns; optional fields are None unless requested."""
  last_hidden_state: jax.Array                 # <float32>[batch, seq, hidden]
  logits: Optional[jax.Array] = None           # <float32>[batch, num_labels]
  hidden_states: Optional[tuple] = None        # (L + 1) x <float32>[batch, seq, hidden]
  attentions: Optional[tuple] = None           # L x <float32>[batch, heads, seq, seq]
  token_masks: Optional[tuple] = None          # L x <float32>[batch, seq], after pruning
  prune_aux: Optional[tuple] = None            # L x whatever prune_fn returned


def _dense(features: int, config: config_lib.EncoderConfig, name: str) -> nn.Dense:
  return nn.Dense(features, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range),
                  **precision.dense_options(config.compute_dtype))


def _layer_norm(config: config_lib.EncoderConfig, name: str = "LayerNorm") -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, name=name)


def _activation(config: config_lib.EncoderConfig) -> Callable[[jax.Array], jax.Array]:
  if config.hidden_act == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  return nn.relu


def roberta_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
  """RoBERTa positions: padding_idx + 1 + index among non-padding tokens, pads at pad.

  Args:
    input_ids: <int32>[batch, seq].
    pad_token_id: the padding id, which RoBERTa also uses as position offset.
  Returns:
    <int32>[batch, seq].
  """
  not_pad = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                 name="word_embeddings")(input_ids)
    x += nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                  name="position_embeddings")(position_ids)
    x += nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                  name="token_type_embeddings")(token_type_ids)
    x = _layer_norm(cfg)(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


def protected_tokens(attention_mask: jax.Array, token_type_ids: jax.Array) -> jax.Array:
  """[CLS] and [SEP] positions, found without the vocabulary.

  [CLS] is position 0; the final [SEP] is the last real token; a pair's middle [SEP]
  is the last real token of segment 0 (type id 0). RoBERTa, whose type ids are all 0,
  gets [CLS] and the final separator only.

  Args:
    attention_mask: <int32|float32>[batch, seq], 1 for real tokens.
    token_type_ids: <int32>[batch, seq].
  Returns:
    <bool>[batch, seq].
  """
  real = attention_mask > 0
  index = jnp.arange(real.shape[1])
  last = jnp.max(jnp.where(real, index, 0), axis=-1, keepdims=True)
  last_first_segment = jnp.max(jnp.where(real & (token_type_ids == 0), index, 0), axis=-1,
                               keepdims=True)
  return real & ((index == 0) | (index == last) | (index == last_first_segment))


def attention_received(probs: jax.Array, token_mask: jax.Array) -> jax.Array:
  """Attention each key receives from the live query rows, mean over heads.

  Args:
    probs: <float32>[batch, heads, seq, seq] attention probabilities (query, key).
    token_mask: <float32>[batch, seq] weight of each query row (0 padding/pruned).
  Returns:
    <float32>[batch, seq].
  """
  return jnp.einsum("bhqk,bq->bk", probs, token_mask) / probs.shape[1]


def key_bias(token_mask: jax.Array) -> jax.Array:
  """Additive attention bias from key weights in [0, 1].

  A weight w multiplies a key's unnormalised attention by w (log w added to the
  logit), so hard masks give the usual 0 / -inf bias and soft masks scale smoothly.

  Args:
    token_mask: <float32>[batch, seq].
  Returns:
    <float32>[batch, 1, 1, seq].
  """
  safe = jnp.maximum(token_mask, 1e-30)  # keeps log's gradient finite at 0
  bias = jnp.where(token_mask > 0, jnp.log(safe), _NEG_INF)
  return bias[:, None, None, :]


def heads_first(x: jax.Array) -> jax.Array:
  """[batch, seq, heads, head_dim] <-> [batch, heads, seq, head_dim]."""
  return x.transpose(0, 2, 1, 3)


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product attention that also returns its probabilities."""
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, hidden, bias, deterministic: bool, softmax_fn=None):
    """`softmax_fn(logits) -> probs`, if given, replaces softmax(logits + bias)."""
    cfg = self.config
    batch, seq, _ = hidden.shape
    split = lambda x: x.reshape(batch, seq, cfg.num_attention_heads, cfg.head_dim)
    q = split(_dense(cfg.hidden_size, cfg, "query")(hidden))
    k = split(_dense(cfg.hidden_size, cfg, "key")(hidden))
    v = split(_dense(cfg.hidden_size, cfg, "value")(hidden))
    logits = precision.matmul(heads_first(q), k.transpose(0, 2, 3, 1),
                              cfg.compute_dtype) / jnp.sqrt(cfg.head_dim).astype(jnp.float32)
    probs = (jax.nn.softmax(logits + bias, axis=-1) if softmax_fn is None
             else softmax_fn(logits))
    dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    context = heads_first(precision.matmul(dropped, heads_first(v), cfg.compute_dtype))
    return context.reshape(batch, seq, cfg.hidden_size), probs


class ResidualOutput(nn.Module):
  """Dense, dropout, residual add and post-LayerNorm (HF's *Output blocks)."""
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, x, residual, deterministic: bool):
    x = _dense(self.config.hidden_size, self.config, "dense")(x)
    x = nn.Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)
    return _layer_norm(self.config)(x + residual)


class Attention(nn.Module):
  """`attention/self` + `attention/output`."""
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, hidden, bias, deterministic: bool, softmax_fn=None):
    context, probs = SelfAttention(self.config, name="self")(hidden, bias, deterministic,
                                                             softmax_fn)
    out = ResidualOutput(self.config, name="output")(context, hidden, deterministic)
    return out, probs


class Intermediate(nn.Module):
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, x):
    x = _dense(self.config.intermediate_size, self.config, "dense")(x)
    return _activation(self.config)(x)


class Layer(nn.Module):
  """One post-LN transformer layer, split in two so pruning can act in between."""
  config: config_lib.EncoderConfig

  def setup(self):
    self.attention = Attention(self.config)
    self.intermediate = Intermediate(self.config)
    self.output = ResidualOutput(self.config)

  def attend(self, hidden, token_mask, deterministic: bool, attention_softmax=None):
    """Returns (<float32>[batch, seq, hidden], probs <float32>[batch, heads, seq, seq])."""
    if attention_softmax is not None:
      return self.attention(hidden, None, deterministic,
                            lambda logits: attention_softmax(logits, token_mask))
    return self.attention(hidden, key_bias(token_mask), deterministic)

  def feed_forward(self, hidden, deterministic: bool):
    return self.output(self.intermediate(hidden), hidden, deterministic)

  def __call__(self, hidden, token_mask, deterministic: bool):
    hidden, _ = self.attend(hidden, token_mask, deterministic)
    return self.feed_forward(hidden, deterministic)


class LayerStack(nn.Module):
  """`encoder/layer/<i>`."""
  config: config_lib.EncoderConfig

  def setup(self):
    self.layers = [Layer(self.config, name=str(i))
                   for i in range(self.config.num_hidden_layers)]


class Encoder(nn.Module):
  config: config_lib.EncoderConfig

  def setup(self):
    self.layer = LayerStack(self.config)


class Pooler(nn.Module):
  """BERT pooler: dense + tanh on the first token."""
  config: config_lib.EncoderConfig

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(_dense(self.config.hidden_size, self.config, "dense")(hidden[:, 0]))


class RobertaClassificationHead(nn.Module):
  """RoBERTa head: dropout, dense + tanh, dropout, out_proj on the first token."""
  config: config_lib.EncoderConfig
  num_labels: int

  @nn.compact
  def __call__(self, hidden, deterministic: bool):
    rate = _classifier_dropout(self.config)
    x = nn.Dropout(rate)(hidden[:, 0], deterministic=deterministic)
    x = jnp.tanh(_dense(self.config.hidden_size, self.config, "dense")(x))
    x = nn.Dropout(rate)(x, deterministic=deterministic)
    return _dense(self.num_labels, self.config, "out_proj")(x)


def _classifier_dropout(config: config_lib.EncoderConfig) -> float:
  if config.classifier_dropout is not None:
    return config.classifier_dropout
  return config.hidden_dropout_prob


def init_params(model: "EncoderModel", rng: jax.Array) -> dict:
  """Fresh parameters of `model`, initialised on a dummy batch."""
  ids = jnp.zeros((1, 8), jnp.int32)
  return model.init(rng, ids, jnp.ones_like(ids))["params"]


class EncoderModel(nn.Module):
  """BERT/RoBERTa encoder with an optional sequence classification/regression head.

  Attributes:
    config: the encoder's sizes.
    num_labels: None for the bare encoder; k for a k-way classifier; 1 for regression.
  """
  config: config_lib.EncoderConfig
  num_labels: Optional[int] = None

  def setup(self):
    cfg = self.config
    self.embeddings = Embeddings(cfg)
    self.encoder = Encoder(cfg)
    if cfg.model_type == "bert":
      self.pooler = Pooler(cfg)
      if self.num_labels:
        self.classifier_dropout = nn.Dropout(_classifier_dropout(cfg))
        self.classifier = _dense(self.num_labels, cfg, "classifier")
    elif self.num_labels:
      self.classifier = RobertaClassificationHead(cfg, self.num_labels)

  @property
  def layers(self) -> list[Layer]:
    return self.encoder.layer.layers

  def embed(self, input_ids, attention_mask, token_type_ids=None, position_ids=None,
            deterministic: bool = True):
    """Embeds tokens. Shapes: <int32>[batch, seq] -> <float32>[batch, seq, hidden]."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
      if self.config.model_type == "roberta":
        position_ids = roberta_position_ids(input_ids, self.config.pad_token_id)
      else:
        position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    del attention_mask  # positions come from ids, as in the reference implementations
    return self.embeddings(input_ids, token_type_ids, position_ids, deterministic)

  def head(self, hidden, deterministic: bool = True):
    """Logits from the final hidden states: <float32>[batch, seq, hidden] -> [batch, labels]."""
    if not self.num_labels:
      return None
    if self.config.model_type == "bert":
      pooled = self.classifier_dropout(self.pooler(hidden), deterministic=deterministic)
      return self.classifier(pooled)
    return self.classifier(hidden, deterministic)

  def __call__(self, input_ids, attention_mask, token_type_ids=None, position_ids=None,
               deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False, prune_fn: Optional[PruneFn] = None,
               attention_softmax: Optional[Callable] = None):
    """Runs the encoder.

    Args:
      input_ids: <int32>[batch, seq].
      attention_mask: <int32|float32>[batch, seq], 1 for real tokens, 0 for padding.
      token_type_ids: <int32>[batch, seq] or None (zeros).
      position_ids: <int32>[batch, seq] or None (derived from the model family).
      deterministic: False enables dropout (needs a 'dropout' rng).
      output_attentions: keep every layer's attention probabilities.
      output_hidden_states: keep the embeddings and every layer's output.
      prune_fn: the pruning hook described in the module docstring.
      attention_softmax: (logits <float32>[batch, heads, seq, seq], token_mask
        <float32>[batch, seq]) -> probabilities, or None (softmax with `key_bias`).
    Returns:
      EncoderOutput.
    """
    hidden = self.embed(input_ids, attention_mask, token_type_ids, position_ids,
                        deterministic)
    if self.is_initializing() and self.config.model_type == "bert":
      self.pooler(hidden)  # create pooler params for a bare BERT too
    token_mask = jnp.asarray(attention_mask, jnp.float32)
    lengths = jnp.sum(token_mask > 0, axis=-1).astype(jnp.int32)
    protected = protected_tokens(
        token_mask, jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
    all_hidden, all_attn, all_masks, all_aux = [hidden], [], [], []
    for index, layer in enumerate(self.layers):
      hidden, probs = layer.attend(hidden, token_mask, deterministic, attention_softmax)
      scale = None
      if prune_fn is not None:
        token_mask, scale, aux = prune_fn(index, attention_received(probs, token_mask),
                                          token_mask, hidden, lengths, protected)
        all_masks.append(token_mask)
        all_aux.append(aux)
      hidden = layer.feed_forward(hidden, deterministic)
      if scale is not None:
        hidden = hidden * scale[..., None]
      all_hidden.append(hidden)
      all_attn.append(probs)
    return EncoderOutput(
        last_hidden_state=hidden,
        logits=self.head(hidden, deterministic),
        hidden_states=tuple(all_hidden) if output_hidden_states else None,
        attentions=tuple(all_attn) if output_attentions else None,
        token_masks=tuple(all_masks) if prune_fn is not None else None,
        prune_aux=tuple(all_aux) if prune_fn is not None else None)
