"""A random four-layer encoder on a few hundred examples: tests and smoke runs."""

import ml_collections

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.model.random_init = True
  config.model.compute_dtype = "float32"  # exactness tests compare at 1e-6
  config.model.overrides = ml_collections.ConfigDict({
      "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
      "intermediate_size": 64, "hidden_dropout_prob": 0.1,
      "attention_probs_dropout_prob": 0.1})
  config.data.max_length = 32
  config.data.buckets = (16, 32)
  config.data.per_device_batch_size = 2
  config.data.per_device_eval_batch_size = 2
  config.data.max_train_examples = 256
  config.data.max_eval_examples = 64
  # Tests and smoke runs pick checkpoints on dev; tests/test_train.py's selection test
  # holds a slice out.
  config.data.selection_fraction = 0.0
  config.train.log_every_steps = 5
  config.train.checkpoint_every_steps = 10
  config.stage_settings.finetune.learning_rate = 1e-3
  return config.lock()
