"""FLOPs accounting on real lengths (methods.md section 4), plus the padded convention.

Per example and layer l, with n_attn tokens entering the layer and n_ffn tokens left
after its pruning decision (multiply-accumulates; FLOPs are twice that):

    MAC_l = 2 d n_attn^2 + 4 d^2 n_attn + 2 d d_ff n_ffn
"""

import numpy as np

from tpjax.models import config as config_lib

# Fixed lengths the ToP tables pad to; used only for the labelled padded convention.
PADDED_LENGTHS = {"sst2": 64, "rte": 256, "mrpc": 128, "qnli": 128, "mnli": 128,
                  "qqp": 128, "cola": 64, "stsb": 128, "wnli": 128}


def mac_formula(n_attn, n_ffn, hidden: int, intermediate: int):
  """MAC_l on any array type (numpy, jax; fractional counts too), no casting."""
  return 2 * hidden * n_attn**2 + 4 * hidden**2 * n_attn + 2 * hidden * intermediate * n_ffn


def layer_macs(n_attn: np.ndarray, n_ffn: np.ndarray, hidden: int,
               intermediate: int) -> np.ndarray:
  """MACs of one layer. Shapes broadcast: [...] -> [...] (float64)."""
  return mac_formula(np.asarray(n_attn, np.float64), np.asarray(n_ffn, np.float64), hidden,
                     intermediate)


def example_macs(lengths: np.ndarray, kept: np.ndarray,
                 config: config_lib.EncoderConfig) -> np.ndarray:
  """Encoder MACs per example.

  Args:
    lengths: <int>[n] real tokens per example (with [CLS]/[SEP]).
    kept: <int>[n, layers] tokens left after each layer's pruning decision.
    config: the encoder's sizes.
  Returns:
    <float64>[n].
  """
  entering = np.concatenate([lengths[:, None], kept[:, :-1]], axis=1)
  return layer_macs(entering, kept, config.hidden_size, config.intermediate_size).sum(-1)


def summarize(lengths: np.ndarray, kept: np.ndarray, config: config_lib.EncoderConfig,
              task: str | None = None) -> dict:
  """Relative FLOPs (real lengths; padded convention beside it) and tokens kept."""
  layers = kept.shape[1]
  full = np.repeat(lengths[:, None], layers, axis=1)
  pruned = example_macs(lengths, kept, config).sum()
  unpruned = example_macs(lengths, full, config).sum()
  result = {
      "relative_flops": float(pruned / unpruned),
      "tokens_kept_per_layer": (kept.mean(0) / lengths.mean()).round(4).tolist(),
      "mean_length": float(lengths.mean()),
  }
  if task in PADDED_LENGTHS:
    pad = PADDED_LENGTHS[task]
    padded = np.full_like(lengths, pad)
    padded_macs = example_macs(padded, np.repeat(padded[:, None], layers, 1), config).sum()
    result[f"relative_flops_padded{pad}"] = float(pruned / padded_macs)
  return result
