"""SDTP prediction modules for SmolLM2-135M's prefill, trained on SQuAD dev articles.

    python -m tpjax.training.sdtp_decoder --config=configs/smollm_sdtp.py \\
        --workdir=runs/smollm_sdtp

Stages at layers 4, 7, ..., 28 (the paper's start 4 / every 3, scaled to 30 layers),
stage s keeping 0.9^(s+1) of the prompt; the first 4 and the last 10% of the prompt's
tokens are always kept. The modules learn the frozen model's saliency (gradient times
input of the next-token loss of the predictions made in the always-kept last 10%, so a
token's saliency is its influence on other tokens; normalised over prunable tokens) on
1024-token windows of the training articles (even indices of dev-v1.1.json; the odd
ones are held out for evaluation).

Two training recipes (`train.recipe`; tpjax/training/sdtp_decoder.py):
- "teacher_forcing" (default): MSE + ranking against the targets on the cached hidden
  states of the unpruned model; milliseconds per step, one training for every ratio.
- "pruned" (the paper's): the modules trained through the model they prune,
  straight-through Gumbel top-k masks keeping exactly the schedule's counts,
  cumulative through the stages, loss lm_weight LM + kd_weight KL(unpruned || pruned)
  on the always-kept tail + the same MSE and ranking terms, backbone frozen.
  Cost, SmolLM2-135M on this 2-core CPU, 1024-token windows: 8 windows per step ask
  XLA for 26 GB (out of memory here); 2 windows per step take about 25 s
  (train.batch_size=2, the measured run in docs/decoder.md). Train it with small
  batches, or on a GPU.

Window cost: 1024 tokens, the shortest evaluated prompt, where 512
were used before. Per window the saliency forward + backward costs about 2.2x the
512-token one (projections and MLP double, attention quadruples), the cached hidden
states double (stages x windows x 1024 x 576 float16: 9 x 64 x 1024 x 576 x 2 B =
0.68 GB), and the pairwise ranking loss, quadratic in the window, costs about 4x per
training step (8 x 1024 x 1024 pairs per stage). Articles shorter than a window give
none (training_windows).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m"
  config.squad_path = "/work/shared/data/squad/dev-v1.1.json"
  config.seed = 0

  config.schedule = ml_collections.ConfigDict()
  config.schedule.start = 4
  config.schedule.every = 3
  config.schedule.ratio = 0.9
  config.schedule.keep_first = 4
  config.schedule.keep_last = 0.1
  config.schedule.step = 64  # compaction bucket (tokens)

  config.saliency = ml_collections.ConfigDict()
  config.saliency.window = 1024          # tokens per training window (>= eval prompts)
  config.saliency.windows_per_article = 3
  config.saliency.max_windows = 64       # CPU budget: one forward + backward each
  config.saliency.norm = "seq_max"       # sdtp.SALIENCY_NORMS
  # T = next-token loss of the predictions made at the window's last `target_last`
  # fraction of positions. Must lie inside schedule.keep_last (always kept), so no
  # prunable token's own prediction is in T (sdtp_decoder.target_weights checks it).
  config.saliency.target_last = 0.1
  # What a token's saliency measures (sdtp_decoder.SALIENCY_TARGETS): "hidden",
  # gradient x input of its hidden state (the paper's); "mask", the first-order loss
  # increase when it is dropped from attention at the stage and every later layer.
  config.saliency.target = "hidden"

  config.train = ml_collections.ConfigDict()
  # "teacher_forcing": the modules learn the saliency targets on the cached hidden
  # states of the unpruned model. "pruned": the paper's way, trained through the model
  # they prune (straight-through Gumbel top-k masks, cumulative over the stages) with
  # the LM and KD terms added (tpjax/training/sdtp_decoder.py).
  config.train.recipe = "teacher_forcing"
  config.train.steps = 300
  config.train.batch_size = 8            # windows per forward/backward pass
  # Micro-batches of batch_size whose mean gradient makes one Adam update (steps counts
  # updates): batch_size 2 x accumulate 4 trains as 8 windows per update in less memory.
  config.train.accumulate = 1
  config.train.learning_rate = 1e-3
  config.train.mse_weight = 1.0          # saliency MSE, per stage (both recipes)
  config.train.rank_weight = 1.0         # saliency ranking, per stage (both recipes)
  config.train.holdout_windows = 8       # training-article windows kept out, for curves
  config.train.progress_bar = True
  # A workdir of trained predictors (same stage layers) to start from, e.g. the
  # teacher-forcing modules as the pruned recipe's warm start; "" starts from a seeded init.
  config.train.init_from = ""
  # The 'pruned' recipe only:
  config.train.lm_weight = 1.0           # next-token loss of the pruned model (tail)
  config.train.kd_weight = 1.0           # KL(unpruned || pruned) on the same predictions
  config.train.gumbel_tau = 1.0          # temperature of the straight-through backward
  config.train.remat = True              # recompute layers in the backward (memory)
  return config
