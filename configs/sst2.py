"""SST-2 with MiniLM-L6: the LTP pipeline, fine-tune (1 epoch) -> soft (0.4) -> hard (0.5).

`make run` runs this config (benchmarks/make_run.sh measures it on a fresh clone).
The soft stage's length sets the FLOPs: its regulariser keeps raising thresholds, and
0.5 epochs at reg_lambda 0.05 ended at 0.534 relative FLOPs and 3.55 points below the
fine-tune; 0.4 epochs aims at about 0.58, inside the 0.60 the main job promises.
`benchmarks/ltp_sweep.sh` varies lambda and `benchmarks/ltp_variants.sh` compares
the reference and tpjax variants, both from the task's one baseline run
(benchmarks/results/baselines.json). Evaluating
the selection slice every 250 steps gives the hard stage several checkpoints to
choose from within the soft stage's FLOPs.
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.data.buckets = (16, 24, 32, 48, 64, 128)
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  config.stage_settings.soft.num_epochs = 0.4
  config.stage_settings.hard.num_epochs = 0.5
  config.train.eval_every_steps = 250
  return config.lock()
