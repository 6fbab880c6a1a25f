"""The LTP family's two settings: faithful to the reference code, or tpjax's choices.

`config.pruning.variant` ('reference' or 'tpjax') picks a value for every field below
that the config leaves None; a field set explicitly wins. The LTP family is the three
methods of the LTP reference code: ltp, threshold and topk.

Pruning fields (config.pruning):
  soft_variant     'reference': each layer's soft mask scales that layer's output and
                   the attention mask never changes in the soft stage (reference code);
                   'cumulative': masks multiply across layers and act as soft key masks
                   in later layers, as hard pruning does at inference.
  reg_masks        which masks the regulariser penalises: 'layer' (each layer's own
                   mask, reference) or 'cumulative' (the running product, the tokens
                   that actually survive).
  reg_norm         'fixed': a mask's sum over real tokens divided by
                   score_norm_constant (128, the reference's padded length, so the
                   reference's lambdas carry over); 'live': divided by the number of
                   real tokens (pressure independent of length, about 128 / mean length
                   times stronger at the same lambda).
  threshold_floor  hard decisions use max(theta, floor) (reference: 1e-5, so a learnt
                   negative threshold still drops tokens with no attention at all).
  topk_rounding    top-k keeps round(rate * n) ('round', reference) or ceil(rate * n)
                   ('ceil', never fewer than the rate promises).
Optimiser fields of the soft and hard stages (config.stage_settings.<stage>):
  warmup_ratio     reference 0 (Hugging Face Trainer default); tpjax 0.06.
  weight_decay     reference 0 (the reference's command line); tpjax 0.01.
  clip_mode        'joint': one gradient norm over model and thresholds (torch's
                   clip_grad_norm_ on all parameters, reference); 'per_group': each
                   optimiser clips its own gradients.
"""

import ml_collections

from tpjax.pruning import variants

VARIANTS = ("reference", "tpjax")
FAMILY = ("ltp", "threshold", "topk")
PRUNING_CHOICES = {
    "soft_variant": {"reference": "reference", "tpjax": "cumulative"},
    "reg_masks": {"reference": "layer", "tpjax": "cumulative"},
    "reg_norm": {"reference": "fixed", "tpjax": "live"},
    "threshold_floor": {"reference": 1e-5, "tpjax": 0.0},
    "topk_rounding": {"reference": "round", "tpjax": "ceil"},
}
STAGE_CHOICES = {
    "warmup_ratio": {"reference": 0.0, "tpjax": 0.06},
    "weight_decay": {"reference": 0.0, "tpjax": 0.01},
    "clip_mode": {"reference": "joint", "tpjax": "per_group"},
}
ALLOWED = {"soft_variant": ("reference", "cumulative"), "reg_masks": ("layer", "cumulative"),
           "reg_norm": ("fixed", "live"), "topk_rounding": ("round", "ceil")}


def _variant(pruning: ml_collections.ConfigDict) -> str:
  return variants.check("variant", pruning.get("variant") or "tpjax", VARIANTS)


def resolve(pruning: ml_collections.ConfigDict) -> dict:
  """The effective value of every field in PRUNING_CHOICES: explicit, else the variant's.

  Raises:
    ValueError: for an unknown variant or choice.
  """
  return variants.resolve(pruning, _variant(pruning), PRUNING_CHOICES, ALLOWED)


def complete(config: ml_collections.ConfigDict) -> None:
  """Fills every None choice of an LTP-family run in place, so config.json records
  exactly what ran. Other methods are left alone."""
  if config.pruning.method not in FAMILY:
    return
  variants.complete(config, _variant(config.pruning), resolve(config.pruning),
                    ("soft", "hard"), STAGE_CHOICES)
