"""Pruning methods by name (`config.pruning.method`)."""

import ml_collections

from tpjax.models import config as config_lib
from tpjax.pruning import base
from tpjax.pruning import ltp
from tpjax.pruning import ltp_variant
from tpjax.pruning import sdtp_encoder
from tpjax.pruning import top
from tpjax.pruning import topk

METHODS = ("none", "ltp", "threshold", "topk", "top", "sdtp")


def complete_config(config: ml_collections.ConfigDict) -> None:
  """Fills, in place, the settings a method derives from others (e.g. the LTP
  family's variant, ToP's), so that config.json records exactly what ran."""
  ltp_variant.complete(config)
  top.complete(config)


def get_method(config: ml_collections.ConfigDict,
               model_config: config_lib.EncoderConfig) -> base.Method:
  """Builds the pruning method named by `config.method`.

  none: no pruning. ltp: learned thresholds (soft, then hard stage). threshold: the
  manual linear threshold schedule, hard from the start. topk: top-k cascade.
  top: ToP's gates under a FLOPs constraint, distilled from the unpruned model.
  sdtp: saliency-trained prediction modules, top-k at fixed keep ratios.
  """
  layers = model_config.num_hidden_layers
  if config.method == "none":
    return base.Method()
  if config.method in ("ltp", "threshold"):
    return ltp.ThresholdMethod(config, layers, learned=config.method == "ltp")
  if config.method == "topk":
    return topk.TopKMethod(config, layers)
  if config.method == "top":
    return top.ToPMethod(config, model_config)
  if config.method == "sdtp":
    return sdtp_encoder.SDTPMethod(config, model_config)
  raise ValueError(f"Unknown pruning method {config.method!r}; expected one of "
                   f"{', '.join(METHODS)}.")
