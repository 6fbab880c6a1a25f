"""MRPC (sentence pairs) with MiniLM-L6: ToP, fine-tune (2 epochs) -> soft (2 epochs).

See configs/sst2_top.py for the stages. The honest baseline is a fine-tuning run as
long as the whole pipeline (4 epochs), README "ToP".
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "mrpc"
  config.data.buckets = (32, 48, 64, 96, 128)
  config.stages = ("finetune", "soft")
  config.pruning.method = "top"
  config.pruning.top_target = 0.5
  config.pruning.top_warmup = 0.25
  config.stage_settings.finetune.num_epochs = 2
  config.stage_settings.soft.num_epochs = 2
  config.stage_settings.soft.learning_rate = 2e-5
  config.stage_settings.soft.pruning_learning_rate = 0.02
  # Hand over (and let inference load) the most accurate dev checkpoint whose relative
  # FLOPs are within 0.03 of the target's 1 - t; change it with top_target.
  config.stage_settings.soft.handover = "best"
  config.stage_settings.soft.flops_budget = "0.53"
  return config.lock()
