"""RTE (sentence pairs, the longest GLUE inputs) with MiniLM-L6: the LTP pipeline."""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "rte"
  config.data.buckets = (64, 96, 128, 192, 256)
  config.data.max_length = 256
  config.data.per_device_eval_batch_size = 32
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.stage_settings.finetune.num_epochs = 3
  config.stage_settings.soft.num_epochs = 5
  config.stage_settings.hard.num_epochs = 3
  return config.lock()
