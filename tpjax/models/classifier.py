"""The encoder classifier a run config describes: model, weights and tokenizer.

Training, inference and tests build models here, so inference never imports the
training loop.
"""

import dataclasses
import os

import jax
import ml_collections

from tpjax.data import tokenization
from tpjax.models import config as config_lib
from tpjax.models import encoder as encoder_lib
from tpjax.models import hf_weights
from tpjax.models import precision
from tpjax.models import pretrained


def build(config: ml_collections.ConfigDict, num_labels: int, rng: jax.Array):
  """Returns (EncoderModel, model params, Tokenizer) for `config.model`.

  The model computes in `config.model.compute_dtype` ('auto': bfloat16 where the
  hardware has a bf16 matrix engine, else float32). With `config.model.random_init`, the architecture is the named checkpoint's with
  `config.model.overrides` applied and the weights are random (tiny test models).
  """
  directory = pretrained.resolve(config.model.name)
  tokenizer = tokenization.Tokenizer.from_directory(directory,
                                                    max_length=config.data.max_length)
  if not config.model.random_init:
    model, params = hf_weights.load_hf_model(directory, num_labels=num_labels, rng=rng)
  else:
    base = config_lib.EncoderConfig.from_json(os.path.join(directory, "config.json"))
    model_config = dataclasses.replace(base, **config.model.overrides.to_dict())
    model = encoder_lib.EncoderModel(model_config, num_labels=num_labels)
    params = encoder_lib.init_params(model, rng)
  return precision.with_dtype(model, config.model.compute_dtype), params, tokenizer
