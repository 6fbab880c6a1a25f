"""MRPC (sentence pairs, longer inputs) with MiniLM-L6: the LTP pipeline."""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "mrpc"
  config.data.buckets = (32, 48, 64, 96, 128)
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.stage_settings.finetune.num_epochs = 3
  config.stage_settings.soft.num_epochs = 2
  config.stage_settings.hard.num_epochs = 2
  return config.lock()
