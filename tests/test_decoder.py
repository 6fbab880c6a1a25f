"""The Flax decoder on tiny random configs: cache, padding, GGUF import, bad input."""

import os

import flax
import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax.inference import generation
from tpjax.models import decoder
from tpjax.models import decoder_weights
from tpjax.models import gguf_file
from tpjax.models import hf_weights

TINY = helpers.tiny_decoder_config(num_hidden_layers=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny():
  model = decoder.DecoderModel(TINY)
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  # Larger weights than the init, so attention is not nearly uniform.
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
  return model, params


@pytest.fixture(scope="module")
def tiny_gen(tiny):
  """One Generator, so the tests share its compiled steps."""
  model, params = tiny
  return generation.Generator(model, params, buckets=(8, 16))


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_param_names_mirror_hf(tiny):
  _, params = tiny
  names = set(decoder_weights.export_state_dict(params))
  assert "model.layers.1.self_attn.k_proj.weight" in names
  assert "model.layers.0.mlp.gate_proj.weight" in names
  assert "model.layers.0.post_attention_layernorm.weight" in names
  assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
  assert not any(n.startswith("lm_head") for n in names)  # tied
  flat = flax.traverse_util.flatten_dict(params)
  assert flat[("model", "layers", "0", "self_attn", "k_proj", "kernel")].shape == (64, 32)


def test_rope_is_relative(tiny):
  """Shifting every position by the same offset leaves the logits unchanged."""
  model, params = tiny
  ids = jnp.array([[5, 17, 33, 8, 60]])
  base = jnp.arange(5)[None]
  a = model.apply({"params": params}, ids, base)
  b = model.apply({"params": params}, ids, base + 11)
  assert _max_diff(a, b) < 1e-4


def test_left_and_right_padding_agree(tiny_gen):
  gen = tiny_gen
  prompts = [[5, 9, 14, 3, 7, 11, 4], [6, 8], [13, 12, 10, 9]]
  left = gen.generate(prompts, 6, padding="left", stop_at_eos=False)
  right = gen.generate(prompts, 6, padding="right", stop_at_eos=False)
  alone = [gen.generate([p], 6, stop_at_eos=False)[0] for p in prompts]
  assert left == right == alone


def test_cached_decoding_equals_recompute(tiny, tiny_gen):
  model, params = tiny
  gen = tiny_gen
  prompts = [[5, 9, 14, 3, 7, 11, 4], [6, 8]]
  steps = list(gen.stream(prompts, 8, stop_at_eos=False, keep_logits=True))
  worst = 0.0
  for row, prompt in enumerate(prompts):
    new = [int(t[row]) for t, _ in steps]
    full = model.apply({"params": params}, jnp.array([prompt + new]))[0]
    for i, (_, logits) in enumerate(steps):
      worst = max(worst, _max_diff(logits[row], full[len(prompt) - 1 + i]))
  print(f"tiny decoder: cached vs recomputed logits max abs diff {worst:.2e}")
  assert worst < 1e-4


def test_layers_may_hold_different_token_counts(tiny):
  """A layer cache with fewer slots (tokens pruned, original positions kept) decodes
  exactly like attention restricted to those tokens."""
  model, params = tiny
  ids = jnp.array([[5, 9, 14, 3, 7, 11, 4, 20]])
  pos = jnp.arange(8)[None]
  valid = jnp.ones((1, 8), bool)
  _, kv = model.apply({"params": params}, ids, pos, valid, method=model.prefill)
  keep = jnp.array([0, 1, 4, 6, 7])  # layer 1 keeps 5 of 8 tokens
  caches = (decoder.new_cache(*kv[0], pos, valid, 16),
            decoder.new_cache(kv[1][0][:, :, keep], kv[1][1][:, :, keep], pos[:, keep],
                              valid[:, keep], 12))
  assert caches[0].capacity == 16 and caches[1].capacity == 12
  token, next_pos = jnp.array([[30]]), jnp.array([[8]])
  logits, caches = model.apply({"params": params}, token, next_pos, caches,
                               method=model.decode)
  assert int(caches[0].length) == 9 and int(caches[1].length) == 6
  assert int(caches[1].positions[0, 5]) == 8
  # Reference: layer 1's attention sees only the kept tokens and the new one.
  layer1_valid = jnp.zeros((1, 9), bool).at[0, jnp.append(keep, 8)].set(True)
  full_ids = jnp.concatenate([ids, token], axis=1)
  full_pos = jnp.arange(9)[None]

  def reference(module, x, positions):
    x = module.model.embed_tokens(x)
    x, _ = module.layers[0](x, positions, jnp.ones((1, 9), bool))
    x, _ = module.layers[1](x, positions, layer1_valid)
    return module.logits(module.model.norm(x))

  expected = model.apply({"params": params}, full_ids, full_pos, method=reference)
  assert _max_diff(logits[0, 0], expected[0, -1]) < 1e-4


def test_bucketed_prefill_does_not_recompile(tiny_gen):
  gen = tiny_gen
  gen.generate([[5, 6, 7]], 2)
  before = gen._prefill._cache_size()  # pylint: disable=protected-access
  gen.generate([[5, 6, 7, 8, 9]], 2)
  gen.generate([[4, 6, 7, 8, 9, 10, 11]], 2)
  assert gen._prefill._cache_size() == before  # pylint: disable=protected-access
  assert generation.bucket_length(9, (8, 16)) == 16
  assert generation.bucket_length(40, (8, 16)) == 48


def test_sampling_respects_top_p():
  logits = jnp.log(jnp.array([[0.6, 0.3, 0.05, 0.05]]))
  draws = {int(generation.sample(logits, jax.random.PRNGKey(i), 1.0, 0.8)[0])
           for i in range(64)}
  assert draws == {0, 1}
  assert int(generation.sample(logits, jax.random.PRNGKey(0), 0.0, 1.0)[0]) == 0


def test_seeded_sample_is_the_tempered_nucleus_draw():
  """A key draws what `jax.random.categorical` draws with the same key from the
  logits over the temperature, cut by hand to the nucleus."""
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  # T = 2: probabilities ~ sqrt(p) = .370 .262 .203 .166; the mass before each token is
  # 0, .370, .632, .835, so top-p 0.7 keeps the first three.
  nucleus = jnp.where(jnp.arange(4) < 3, logits / 2.0, -jnp.inf)
  got, want = [], []
  for i in range(24):
    key = jax.random.PRNGKey(i)
    got += [int(generation.sample(logits, key, 0.5, 1.0)[0]),
            int(generation.sample(logits, key, 2.0, 0.7)[0])]
    want += [int(jax.random.categorical(key, logits / 0.5)[0]),
             int(jax.random.categorical(key, nucleus)[0])]
  assert got == want
  assert set(want[0::2]) == set(want[1::2]) == {0, 1, 2}  # draws that vary


def test_prompt_longer_than_context(tiny_gen):
  with pytest.raises(generation.ContextLengthError, match=r"60 tokens.*supports 64"):
    tiny_gen.generate([list(range(3, 63))], 8)


# --- GGUF files written here, the way llama.cpp's converter writes them -------------

_QUANT = {"q_proj": "Q4_0", "k_proj": "Q4_1", "v_proj": "Q8_0", "o_proj": "F16"}
_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _permute_like_llama_cpp(w, heads):
  return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(
      w.shape)


def _stored_type(name, tensor_type=None):
  """The GGUF type `write_gguf` stores HF tensor `name` as."""
  if tensor_type:
    return tensor_type
  if name == "model.embed_tokens.weight":
    return "Q8_0"
  return _QUANT.get(name.split(".")[-2], "F32")


def _as_loaded(w, qtype):
  """What a tensor stored as `qtype` must load as, from `gguf`'s own encoding.

  GGML blocks run along rows, so llama.cpp's row permutation of Q/K commutes with
  quantisation: the unpermuted rows equal the round trip of the original ones.
  """
  w = np.asarray(w, np.float32)
  if qtype == "F32":
    return w
  if qtype == "F16":
    return w.astype(np.float16).astype(np.float32)
  kind = gguf.GGMLQuantizationType[qtype]
  return np.asarray(gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind),
                    np.float32).reshape(w.shape)


def write_gguf(path, state, config, arch="llama", tensor_type=None, extra=None):
  """Writes HF-named float32 `state` as a llama.cpp-style GGUF file."""
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_rope_freq_base(config.rope_theta)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_vocab_size(config.vocab_size)
  for key, value in (extra or {}).items():
    writer.add_key_value(key, *value)
  for name, w in state.items():
    if name == "model.embed_tokens.weight":
      target = "token_embd.weight"
    elif name == "model.norm.weight":
      target = "output_norm.weight"
    elif name == "lm_head.weight":
      target = "output.weight"
    else:
      layer, rest = name.split(".", 3)[2:]
      module = rest.rsplit(".", 1)[0]
      target = f"blk.{layer}.{_GGUF_NAMES[module]}.weight"
      if module.endswith("q_proj"):
        w = _permute_like_llama_cpp(w, config.num_attention_heads)
      elif module.endswith("k_proj"):
        w = _permute_like_llama_cpp(w, config.num_key_value_heads)
    qtype = gguf.GGMLQuantizationType[_stored_type(name, tensor_type)]
    if qtype == gguf.GGMLQuantizationType.F32:
      writer.add_tensor(target, np.asarray(w, np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
      writer.add_tensor(target, np.asarray(w, np.float16))
    else:
      data = gguf.quants.quantize(np.asarray(w, np.float32), qtype)
      writer.add_tensor(target, data, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
  _, params = tiny
  state = decoder_weights.export_state_dict(params)
  path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", state, TINY)
  return path, state


def test_gguf_import_undoes_permutation_and_dequantizes(tiny_gguf):
  path, state = tiny_gguf
  model, params, _ = decoder_weights.load_gguf(path)
  assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 2
  loaded = decoder_weights.export_state_dict(params)
  assert set(loaded) == set(state)
  for name, w in state.items():
    np.testing.assert_array_equal(loaded[name], _as_loaded(w, _stored_type(name)),
                                  err_msg=name)


@pytest.mark.parametrize("tensor_type", gguf_file.SUPPORTED_TENSOR_TYPES)
def test_every_tensor_type_loads_as_gguf_encodes_it(tmp_path, tensor_type):
  """Every tensor, untied output.weight included, stored as one type: F32 loads
  bit-exactly, F16 as float16 rounds, each quant type as `gguf`'s own round trip."""
  config = decoder.DecoderConfig(**{**TINY.__dict__, "tie_word_embeddings": False})
  shapes = decoder_weights.export_state_dict(
      decoder.init_params(decoder.DecoderModel(config), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(1)
  # Random norms too, and values float16 cannot hold, so any rounding shows.
  state = {name: rng.normal(0.0, 0.5, w.shape).astype(np.float32)
           for name, w in shapes.items()}
  assert "lm_head.weight" in state
  path = write_gguf(tmp_path / f"{tensor_type}.gguf", state, config,
                    tensor_type=tensor_type)
  model, params, f = decoder_weights.load_gguf(path)
  assert {t.tensor_type.name for t in f.tensors.values()} == {tensor_type}
  assert not model.config.tie_word_embeddings
  loaded = decoder_weights.export_state_dict(params)
  assert set(loaded) == set(state)
  for name, w in state.items():
    want = _as_loaded(w, tensor_type)
    if tensor_type != "F32":
      assert not np.array_equal(want, w), f"{name}: {tensor_type} must change values"
    np.testing.assert_array_equal(loaded[name], want, err_msg=name)
  # The untied head, not the embedding, makes the logits.
  ids = jnp.array([[3, 17, 40, 5]])
  positions, valid = jnp.arange(4)[None], jnp.ones((1, 4), bool)
  hidden, _ = model.apply({"params": params}, ids, positions, valid, method=model.prefill)
  head = _as_loaded(state["lm_head.weight"], tensor_type)
  np.testing.assert_allclose(model.apply({"params": params}, ids),
                             np.asarray(hidden) @ head.T, rtol=1e-5, atol=1e-5)


def test_gguf_matches_transformers_on_tiny_model(tiny_gguf):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path, _ = tiny_gguf
  model, params, _ = decoder_weights.load_gguf(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  ids = np.array([[3, 17, 40, 5, 77, 12, 9]])
  ours = model.apply({"params": params}, jnp.asarray(ids))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(ids)).logits.numpy()
  diff = _max_diff(ours, theirs)
  print(f"tiny GGUF: tpjax vs transformers logits max abs diff {diff:.2e}")
  assert diff < 1e-4


def test_hf_directory_roundtrip_untied(tmp_path):
  config = decoder.DecoderConfig(**{**TINY.__dict__, "tie_word_embeddings": False})
  model = decoder.DecoderModel(config)
  params = decoder.init_params(model, jax.random.PRNGKey(1))
  decoder_weights.save_hf_directory(str(tmp_path), model, params)
  loaded_model, loaded = decoder_weights.load_hf_directory(str(tmp_path))
  assert not loaded_model.config.tie_word_embeddings
  ids = jnp.array([[4, 8, 15, 16, 23, 42]])
  assert _max_diff(model.apply({"params": params}, ids),
                   loaded_model.apply({"params": loaded}, ids)) == 0.0


def test_unknown_architecture_in_gguf(tiny_gguf, tmp_path):
  _, state = tiny_gguf
  path = write_gguf(tmp_path / "mamba.gguf", state, TINY, arch="mamba")
  with pytest.raises(gguf_file.GGUFError, match=r"architecture 'mamba'; supported: llama"):
    decoder_weights.load_gguf(path)


def test_unknown_architecture_in_config_json():
  with pytest.raises(decoder.ConfigError, match=r"'gpt_neox'; supported: llama"):
    decoder.DecoderConfig.from_hf_dict({"model_type": "gpt_neox"})


def test_unsupported_tensor_type(tiny_gguf, tmp_path):
  _, state = tiny_gguf
  path = write_gguf(tmp_path / "q5.gguf", state, TINY, tensor_type="Q5_0")
  with pytest.raises(gguf_file.GGUFError,
                     match=r"Q5_0.*supported tensor types: F32, F16, Q4_0, Q4_1, Q8_0"):
    decoder_weights.load_gguf(path)


@pytest.mark.parametrize("keep", [0.6, 0.005])
def test_truncated_gguf(tiny_gguf, tmp_path, keep):
  path, _ = tiny_gguf
  with open(path, "rb") as f:
    data = f.read()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(gguf_file.GGUFError, match=r"truncated"):
    decoder_weights.load_gguf(str(cut))


def test_mis_shaped_and_missing_tensors_listed_together(tiny_gguf, tmp_path):
  _, state = tiny_gguf
  state = dict(state)
  del state["model.layers.1.mlp.up_proj.weight"]
  state["model.layers.0.mlp.down_proj.weight"] = np.zeros((64, 96), np.float32)
  path = write_gguf(tmp_path / "bad.gguf", state, TINY)
  with pytest.raises(hf_weights.WeightImportError) as err:
    decoder_weights.load_gguf(path)
  message = str(err.value)
  assert "missing: model/layers/1/mlp/up_proj/kernel" in message
  assert "mis-shaped: model/layers/0/mlp/down_proj/kernel" in message
