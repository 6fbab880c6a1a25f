"""SST-2 with MiniLM-L6: ToP (tpjax/pruning/top.py), fine-tune -> soft (0.4 epoch).

The 'soft' stage trains the model, the hard-concrete gates and the Lagrange
multipliers together, distilling from the fine-tuned model (the teacher); it is
evaluated, and handed over, with the hard inference decisions. There is no 'hard'
stage: ToP's gates are decided from their probabilities at inference. The measured
runs start from an existing fine-tuned run:

    python -m tpjax.main --config=configs/sst2_top.py --workdir=runs/sst2_top_t0.5 \\
      --config.init_from=runs/sst2_ft --config.stages='("soft",)' \\
      --config.pruning.top_target=0.5 --config.stage_settings.soft.flops_budget=0.53

It trains as the ToP reference does (`pruning.top_variant='reference'`, top.py): the
layer gate binarised with a straight-through estimator, masks multiplying the previous
location's binary decision, ranking weight 1e-2 on scores over heads x batch length,
expected sparsity as a mean of per-example ratios, model lr 1e-5 with no warm-up and no
weight decay, layer 0 never pruning. `--config.pruning.top_variant=tpjax` trains as
tpjax's first version did (and model lr 2e-5 with
`--config.stage_settings.soft.learning_rate=2e-5`).
"""

from configs import common


def get_config():
  config = common.get_base_config()
  config.task = "sst2"
  config.data.buckets = (16, 24, 32, 48, 64, 128)
  # gates and multipliers: the reference uses 0.02 over 40 epochs, too slow to settle
  # within the half epoch measured here
  common.use_top(config, soft_epochs=0.4, pruning_learning_rate=0.05)
  config.train.eval_every_steps = 200
  return config.lock()
