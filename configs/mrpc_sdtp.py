"""MRPC with MiniLM-L6: SDTP (tpjax/pruning/sdtp_encoder.py), fine-tune -> soft.

Started from a fine-tuned MRPC run:

    python -m tpjax.main --config=configs/mrpc_sdtp.py --workdir=runs/mrpc_sdtp \\
      --config.init_from=/work/main/runs/mrpc_ft2 --config.stages='("soft",)'
"""

from configs import mrpc


def get_config():
  config = mrpc.get_config()
  with config.unlocked():
    config.stages = ("finetune", "soft")
    config.pruning.method = "sdtp"
    config.pruning.sdtp_keep_ratio = 0.7
    config.stage_settings.soft.num_epochs = 1.0
    config.stage_settings.soft.pruning_learning_rate = 1e-3
    config.stage_settings.soft.handover = "last"
    config.train.eval_every_steps = 0
  return config.lock()
