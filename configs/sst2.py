"""SST-2 with MiniLM-L6: the LTP pipeline, fine-tune (1 epoch) -> soft -> hard (0.5 each).

The stage lengths and reg_lambda (0.05, the common default) are the measured setting
in README; `benchmarks/sst2_lambda_sweep.sh` varies lambda and
`benchmarks/ltp_variants.sh` compares the reference and tpjax variants, both from one
fine-tuned run. Dev evaluation every 250 steps gives the hard stage several
checkpoints to choose from within the soft stage's FLOPs.
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.data.buckets = (16, 24, 32, 48, 64, 128)
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.stage_settings.soft.num_epochs = 0.5
  config.stage_settings.hard.num_epochs = 0.5
  config.train.eval_every_steps = 250
  return config.lock()
