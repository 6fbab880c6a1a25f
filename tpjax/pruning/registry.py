"""Pruning methods by name (`config.pruning.method`)."""

import ml_collections

from tpjax.models import config as config_lib
from tpjax.pruning import base


def get_method(config: ml_collections.ConfigDict,
               model_config: config_lib.EncoderConfig) -> base.Method:
  """Builds the pruning method named by `config.method`."""
  del model_config
  if config.method == "none":
    return base.Method()
  raise ValueError(f"Unknown pruning method {config.method!r}; expected one of: none.")
