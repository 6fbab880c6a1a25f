"""RTE (the longest GLUE pairs) with MiniLM-L6: ToP, fine-tune (10 epochs) -> soft (10).

The training choices are those of configs/mrpc_top.py (the reference's, 10 soft epochs
so that the Lagrange multipliers settle). The curve's runs start from RTE's one
baseline (10 epochs at lr 2e-5), with the FLOPs budget set from each target:

    TASK=rte benchmarks/top_sweep.sh 0.6 0.5
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "rte"
  config.data.buckets = (64, 96, 128, 192, 256)
  config.data.max_length = 256
  config.data.per_device_eval_batch_size = 32
  config.stages = ("finetune", "soft")
  config.pruning.method = "top"
  config.pruning.top_target = 0.5
  config.pruning.top_warmup = 0.25
  config.stage_settings.finetune.num_epochs = 10
  config.stage_settings.finetune.learning_rate = 2e-5  # 5e-5 stayed at the majority class
  config.stage_settings.soft.num_epochs = 10
  config.stage_settings.soft.learning_rate = 1e-5  # the reference's
  config.stage_settings.soft.pruning_learning_rate = 0.02
  # the checkpoint most accurate on the held-out slice within 0.03 of 1 - top_target
  config.stage_settings.soft.handover = "best"
  config.stage_settings.soft.flops_budget = "0.53"
  return config.lock()
