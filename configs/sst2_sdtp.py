"""SST-2 with MiniLM-L6: SDTP (tpjax/pruning/sdtp_encoder.py), fine-tune -> soft.

The 'soft' stage trains only the prediction modules (layers 1..5), the backbone frozen,
against the fine-tuned model's saliency; it is evaluated with the hard top-k decisions
at the keep ratios r^(s+1). The measured runs start from an existing fine-tuned run:

    python -m tpjax.main --config=configs/sst2_sdtp.py --workdir=runs/sst2_sdtp \\
      --config.init_from=/work/main/runs/sst2_ft --config.stages='("soft",)'

The keep ratio is an inference setting: `benchmarks/sdtp_sweep.py` evaluates one
trained run at several r.
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.data.buckets = (16, 24, 32, 48, 64, 128)
  config.stages = ("finetune", "soft")
  config.pruning.method = "sdtp"
  config.pruning.sdtp_keep_ratio = 0.7
  config.stage_settings.soft.num_epochs = 0.15
  # The modules' Adam rate (the backbone is frozen; its learning_rate is unused).
  config.stage_settings.soft.pruning_learning_rate = 1e-3
  config.stage_settings.soft.handover = "last"
  config.train.eval_every_steps = 1000  # the stage end only: CPU budget
  return config.lock()
