"""Shared test fixtures: a small synthetic GLUE folder and tiny configs."""

import os

import numpy as np

from configs import tiny

_WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "a", "plot",
          "is", "was", "very", "not", "story", "acting"]


def write_sst2(directory: str, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> str:
  """Writes SST-2-layout TSVs whose label is whether a positive word occurs."""
  rng = np.random.default_rng(seed)
  folder = os.path.join(directory, "SST-2")
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", n_train), ("dev", n_dev)):
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
      f.write("sentence\tlabel\n")
      for _ in range(n):
        words = list(rng.choice(_WORDS, size=rng.integers(2, 20)))
        label = int(any(w in ("good", "great", "fine") for w in words))
        f.write(" ".join(words) + f" \t{label}\n")
  return directory


def tiny_config(glue_dir: str, **train_overrides):
  config = tiny.get_config()
  config.data.glue_dir = glue_dir
  config.data.source = "tsv"
  config.train.progress_bar = False
  for key, value in train_overrides.items():
    config.train[key] = value
  return config
