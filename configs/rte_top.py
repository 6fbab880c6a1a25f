"""RTE (the longest GLUE pairs) with MiniLM-L6: ToP, fine-tune (10 epochs) -> soft (10).

The data settings are configs/rte.py's, the training choices those of
configs/mrpc_top.py (the reference's, 10 soft epochs so that the Lagrange multipliers
settle). The curve's runs start from RTE's one baseline (10 epochs at lr 2e-5), with
the FLOPs budget set from each target:

    TASK=rte benchmarks/top_sweep.sh 0.6 0.5
"""

from configs import common, rte


def get_config():
  config = rte.get_config().unlock()
  config.stage_settings.finetune.num_epochs = 10
  config.stage_settings.finetune.learning_rate = 2e-5  # 5e-5 stayed at the majority class
  common.use_top(config, soft_epochs=10, pruning_learning_rate=0.02)
  return config.lock()
