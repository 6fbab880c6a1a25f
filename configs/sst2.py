"""SST-2 with MiniLM-L6: the LTP pipeline, fine-tune -> soft -> hard."""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.data.buckets = (16, 24, 32, 48, 64, 128)
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  return config.lock()
