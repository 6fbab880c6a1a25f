"""Every config field, declared once; task configs override values only."""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def stage(num_epochs: float, learning_rate: float, pruning_learning_rate: float = 0.0,
          handover: str = "best", flops_budget: str = "") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "num_epochs": float(num_epochs),  # fractional epochs allowed
      "learning_rate": learning_rate,
      # Learning rate of the method's own parameters (soft stage only).
      "pruning_learning_rate": pruning_learning_rate,
      # What the next stage starts from: 'best' dev checkpoint, or the 'last' state
      # (the soft stage's job is to learn thresholds, which its last state holds).
      "handover": handover,
      # Checkpoints eligible as 'best': '' all; 'start' those whose relative FLOPs are
      # at most the stage's start (+ train.flops_slack), so fine-tuning after pruning
      # cannot buy accuracy by keeping more tokens; or a number, a FLOPs target.
      "flops_budget": flops_budget,
      # Steps between judgements of the checkpoint on the selection slice; None:
      # train.eval_every_steps. A stage that picks under a FLOPs budget early in its
      # run wants more candidates than the global cadence gives.
      "eval_every_steps": placeholder(int),
      # Optimizer overrides for this stage; None: the LTP family's variant
      # (tpjax/pruning/ltp_variant.py) in pruning stages, ToP's (top.py) in its soft
      # stage, else config.train's value.
      "warmup_ratio": placeholder(float),
      "weight_decay": placeholder(float),
      "clip_mode": placeholder(str),
  })


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "sst2"
  config.seed = 0
  config.stages = ("finetune",)
  # Start from another run's finetune/best checkpoint (a workdir path) instead of the
  # pretrained weights; its finetune stage is then usually left out of `stages`.
  config.init_from = ""
  config.distributed = False  # jax.distributed.initialize() for multi-host jobs
  # Multi-host without a cluster JAX detects: process 0's 'host:port', the process
  # count and this process's index. '' lets JAX detect all three (GPU cluster, TPU pod).
  config.coordinator_address = ""
  config.num_processes = 0
  config.process_id = 0
  config.num_devices = 0      # 0: all devices

  config.model = ml_collections.ConfigDict()
  config.model.name = "minilm-l6"  # alias or local Hugging Face directory
  config.model.random_init = False  # random weights, architecture with overrides
  config.model.overrides = ml_collections.ConfigDict()
  # Matmul operand dtype, float32 accumulation (tpjax/models/precision.py): auto
  # (bfloat16 on GPUs, TPUs and CPUs with AMX/AVX512-BF16, else float32) | bfloat16 |
  # float32. Parameters, optimiser state, norms, softmax, losses and keep decisions
  # stay float32 either way.
  config.model.compute_dtype = "auto"

  config.data = ml_collections.ConfigDict()
  config.data.glue_dir = ""       # '' means $TPJAX_GLUE_DIR, then TFDS
  config.data.source = "auto"     # auto | tsv | tfds
  config.data.max_length = 128
  config.data.buckets = (16, 32, 64, 128)
  config.data.per_device_batch_size = 32
  config.data.per_device_eval_batch_size = 64
  config.data.max_train_examples = placeholder(int)
  config.data.max_eval_examples = placeholder(int)
  # Selection without dev: a seeded slice of the training set (this fraction, at most
  # selection_max_examples, 0 for no cap) is held out of training and picks the best
  # checkpoint (and, in sweeps, keep ratios, lambda, t); dev is evaluated once, at the
  # selected point. The seed is its own, so runs with other training seeds share the
  # slice. 0: no slice, select on dev (as the references do).
  config.data.selection_fraction = 0.1
  config.data.selection_max_examples = 2000
  config.data.selection_seed = 0

  config.train = ml_collections.ConfigDict()
  config.train.warmup_ratio = 0.06
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0
  config.train.clip_mode = "per_group"     # per_group | joint (one norm over all params)
  config.train.flops_slack = 0.005         # tolerance of flops_budget='start'
  config.train.max_steps = 0               # 0: no cap (whole epochs)
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 0        # 0: once per epoch
  config.train.checkpoint_every_steps = 500
  config.train.progress_bar = True

  config.stage_settings = ml_collections.ConfigDict({
      "finetune": stage(num_epochs=1, learning_rate=5e-5),
      "soft": stage(num_epochs=1, learning_rate=2e-5, pruning_learning_rate=2e-5,
                    handover="last"),
      "hard": stage(num_epochs=1, learning_rate=1e-5, flops_budget="start"),
  })

  config.pruning = ml_collections.ConfigDict()
  config.pruning.method = "none"          # none | ltp | threshold | topk | top | sdtp
  config.pruning.score_norm = "fixed"     # fixed | live (methods.md section 0)
  config.pruning.score_norm_constant = 128.0
  config.pruning.final_threshold = 0.01   # ltp / threshold: last layer's initial theta
  config.pruning.temperature = 1e-3       # ltp soft mask temperature
  config.pruning.reg_lambda = 0.05        # ltp mask regulariser weight
  config.pruning.first_layer_prunes = False  # ltp/threshold: layer 0 fixed at theta 0
  # LTP family (ltp, threshold, topk): 'reference' follows the LTP code, 'tpjax' makes
  # tpjax's choices; each choice below left None takes the variant's value
  # (tpjax/pruning/ltp_variant.py and README, "LTP: reference and tpjax variants").
  config.pruning.variant = "tpjax"        # tpjax | reference
  config.pruning.soft_variant = placeholder(str)     # cumulative | reference
  config.pruning.reg_masks = placeholder(str)        # cumulative | layer
  config.pruning.reg_norm = placeholder(str)         # live | fixed
  config.pruning.threshold_floor = placeholder(float)
  config.pruning.topk_rounding = placeholder(str)    # ceil | round
  config.pruning.keep_rate = 0.5          # topk: keep rate at the last layer
  config.pruning.topk_full_layers = 0     # topk: unpruned first layers; 0: max(3, 0.15 L)
  # top (ToP, tpjax/pruning/top.py): hard-concrete gates per layer and per rank bin
  # under an expected-FLOPs constraint, ranking and logit distillation from the
  # unpruned model; gates and multipliers train at the stage's pruning_learning_rate.
  config.pruning.top_target = 0.4         # FLOPs sparsity target (1 - relative FLOPs)
  config.pruning.top_warmup = 0.3         # stage fraction: target ramp from 0, rank decay
  config.pruning.top_bins = 25
  config.pruning.top_rank_k = 20          # teacher's top-K tokens in the ranking loss
  # 'reference' trains as the ToP code does, 'tpjax' as tpjax's first version did; each
  # choice below left None takes the variant's value (tpjax/pruning/top.py), and so do
  # stage_settings.soft.warmup_ratio and weight_decay (reference 0 and 0).
  config.pruning.top_variant = "reference"          # reference | tpjax
  config.pruning.top_layer_gate = placeholder(str)     # ste (reference) | soft
  config.pruning.top_cumulative = placeholder(str)     # binary (reference) | soft
  config.pruning.top_rank_alpha = placeholder(float)   # ranking weight: 1e-2 | 1e-3
  config.pruning.top_rank_norm = placeholder(str)      # batch (reference) | fixed | live
  config.pruning.top_sparsity_mean = placeholder(str)  # examples (reference) | tokens
  config.pruning.top_rank_layers = ()     # (): layers 1 .. L/3 - 1
  config.pruning.top_temperature = 2.0    # logit distillation temperature
  config.pruning.top_layer_gate_init = 0.05  # initial P(gate open)
  config.pruning.top_bin_gate_init = 0.998
  config.pruning.top_freeze_embeddings = True
  # Adam's second-moment decay for gates and multipliers; 0.999 (Adam's default, the
  # reference's) reacts slowly after large early gradients in short runs.
  config.pruning.top_adam_b2 = 0.999
  # How many bins inference closes: 'expected' (the trained expectation; equals the
  # reference's rule once layer gates are 0 or 1) or 'reference' (layer gate >= 0.5,
  # then round(bins - sum P)); top.closed_bins.
  config.pruning.top_inference = "expected"
  # Layers before this one never prune; at least 1. The reference's prune locations
  # start at 2 using layer 1's scores, so layer 0 never prunes there either.
  config.pruning.top_first_layer = 1
  # sdtp (tpjax/pruning/sdtp_encoder.py): saliency-trained prediction modules, trained
  # in a 'soft' stage with the backbone frozen; inference keeps the top
  # ceil(rho_s * length) tokens at location s, rho_s = r^(s+1) unless listed.
  config.pruning.sdtp_layers = ()         # (): layers 1 .. L-1
  config.pruning.sdtp_keep_ratio = 0.9    # r
  config.pruning.sdtp_keep_ratios = ()    # explicit rho_s per location
  config.pruning.sdtp_target = "logit"    # logit (gold class) | loss
  config.pruning.sdtp_norm = "seq_max"    # raw | abs | seq_max
  config.pruning.sdtp_tau = 1.0           # Gumbel-softmax temperature
  config.pruning.sdtp_task_weight = 1.0
  config.pruning.sdtp_mse_weight = 1.0
  config.pruning.sdtp_rank_weight = 1.0
  config.pruning.sdtp_ratio_weight = 0.0  # DynamicViT ratio loss (2.0 there); 0: off
  return config


def use_top(config: ml_collections.ConfigDict, soft_epochs: float,
            pruning_learning_rate: float) -> None:
  """ToP after the fine-tune: one soft stage trained as the reference trains it.

  It hands over (and inference loads) the checkpoint most accurate on the held-out
  selection slice whose relative FLOPs are within 0.03 of 1 - top_target; sweeps set
  flops_budget with the target.
  """
  slack = 0.03
  config.stages = ("finetune", "soft")
  config.pruning.method = "top"
  config.pruning.top_target = 0.5
  config.pruning.top_warmup = 0.25
  soft = config.stage_settings.soft
  soft.num_epochs = float(soft_epochs)
  soft.learning_rate = 1e-5  # the reference's
  soft.pruning_learning_rate = pruning_learning_rate
  soft.handover = "best"
  soft.flops_budget = f"{1 - config.pruning.top_target + slack:.4g}"
