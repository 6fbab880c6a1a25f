"""Shared test fixtures: a small synthetic GLUE folder, tiny configs, and a command
line run in this process."""

import contextlib
import functools
import io
import os
import runpy
import sys

import numpy as np

from configs import tiny
from tpjax.models import decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def tiny_decoder_config(num_hidden_layers: int = 5,
                        max_position_embeddings: int = 128) -> decoder.DecoderConfig:
  """A SmolLM2-shaped decoder small enough to compile in seconds (GQA: 4 query heads
  share 2 key/value heads, tied embeddings, a 96-token vocabulary)."""
  return decoder.DecoderConfig(
      vocab_size=96, hidden_size=64, intermediate_size=128,
      num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
      rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=max_position_embeddings,
      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


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


# Sentences of different lengths for the shared pruning test case.
PRUNING_TEXTS = [
    "good film", "the plot is very dull and the acting awful but the music is fine",
    "a", "not a great story but fine acting", "the film was very very very dull",
    "awful", "great great great film with a very good plot and fine acting too",
    "the story is not bad and the acting is not awful either, a fine film"]
# Fraction of the still-live tokens each layer keeps (layer 0 never prunes).
PRUNING_KEEP = (1.0, 0.7, 0.7, 0.7)


class StopAfter:
  """Stands in for the signal handler: asks to stop after `n` steps."""

  signum = None  # as if another process had been signalled

  def __init__(self, n):
    self.n = n
    self.checks = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  @property
  def requested(self):
    self.checks += 1
    return self.checks == self.n


class PruningCase:
  """A 4-layer random encoder with LTP thresholds that really prune.

  Thresholds are set, layer by layer, between two neighbouring importance scores at
  the `PRUNING_KEEP` quantile of the live tokens of `PRUNING_TEXTS`, so middle layers
  keep 30-70% of the real tokens, differently per example, and no score sits within
  float error of a threshold. Attributes: model, params ({'model', 'pruning'}),
  tokenizer, method (LTP with `score_norm`), texts.
  """

  def __init__(self, seed: int = 7, score_norm: str = "fixed"):
    # Imported here so test modules that only need the TSV writer stay light.
    import jax
    import jax.numpy as jnp
    from tpjax.models import classifier
    from tpjax.pruning import registry
    from tpjax.pruning import scores

    config = tiny.get_config()
    with config.unlocked():
      config.model.overrides.initializer_range = 0.2  # peaked attention, spread scores
    self.model, model_params, self.tokenizer = classifier.build(
        config, 2, jax.random.PRNGKey(seed))
    config.pruning.method = "ltp"
    config.pruning.final_threshold = 0.0  # theta_l = delta_l
    config.pruning.score_norm = score_norm
    self.method = registry.get_method(config.pruning, self.model.config)
    self.texts = list(PRUNING_TEXTS)
    batch = self.tokenizer(self.texts, length=32)
    layers = self.model.config.num_hidden_layers
    delta = np.full((layers,), -1.0, np.float32)  # -1: keep everything
    for layer in range(1, layers):
      self.params = {"model": model_params, "pruning": {"delta": jnp.asarray(delta)}}
      out = self.model.apply({"params": model_params}, **batch, output_attentions=True,
                             prune_fn=self.method.prune_fn(self.params["pruning"], "hard"))
      live = out.token_masks[layer - 1]
      score = np.asarray(scores.importance(out.attentions[layer], live, score_norm))
      candidates = np.sort(score[:, 1:][np.asarray(live)[:, 1:] > 0])  # [CLS] is kept
      cut = int(round((1 - PRUNING_KEEP[layer]) * len(candidates)))
      delta[layer] = 0.5 * (candidates[cut - 1] + candidates[cut])
      margin = (candidates[cut] - candidates[cut - 1]) / delta[layer]
      assert margin > 1e-3, f"layer {layer}: scores too close to the threshold"
    self.params = {"model": model_params, "pruning": {"delta": jnp.asarray(delta)}}

  def kept_fraction(self) -> np.ndarray:
    """<float>[examples, layers]: tokens left after each layer / real tokens."""
    batch = self.tokenizer(self.texts, length=32)
    out = self.model.apply({"params": self.params["model"]}, **batch,
                           prune_fn=self.method.prune_fn(self.params["pruning"], "hard"))
    kept = np.stack([np.asarray(m).sum(-1) for m in out.token_masks], -1)
    return kept / batch["attention_mask"].sum(-1, keepdims=True)


@functools.cache
def pruning_case(score_norm: str = "fixed") -> PruningCase:
  """The default `PruningCase`, built once per test session: test modules share it
  instead of each building the model and calibrating its thresholds again. Tests must
  not change it (its params are jax arrays; do not reassign its attributes)."""
  return PruningCase(score_norm=score_norm)


def run_cli(module: str, *args: str, traceback: bool = False) -> tuple[int, str, str]:
  """Runs `python -m <module> <args>` in this process; returns (exit code, stdout,
  stderr).

  For commands that stop before any work (a bad flag or config value): a subprocess
  would spend seconds importing jax and torch only to print one paragraph. Each
  tests/test_*.py that checks an exit code keeps one real subprocess as well. The
  module's flags are deleted afterwards, so it can run again, and flags that entry
  points imported by other tests defined (`--workdir`, ...) are set aside meanwhile,
  so the names do not collide. An error the command does not handle (a traceback in
  a real process) is raised here.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tpjax import cli  # pylint: disable=g-import-not-at-top
  app.define_help_flags()  # absl's own, defined once per process: not ours to delete
  hidden = [(m, f) for m, fs in flags.FLAGS.flags_by_module_dict().items()
            if m.startswith("tpjax") for f in fs]
  for _, flag in hidden:
    if flag.name in flags.FLAGS:
      delattr(flags.FLAGS, flag.name)
  before, was_parsed = set(flags.FLAGS), flags.FLAGS.is_parsed()
  # The whole environment comes back afterwards: a module run as __main__ may set
  # variables for its own process (tpjax.generate adds XLA flags), which would reach
  # the subprocesses of later tests.
  saved_environ = dict(os.environ)
  saved_argv, saved_env = sys.argv, os.environ.pop(cli.TRACEBACK_ENV, None)
  if traceback:
    os.environ[cli.TRACEBACK_ENV] = "1"
  flags.FLAGS.unparse_flags()  # a failed parse must look like one to cli.run
  out, err = io.StringIO(), io.StringIO()
  code, cwd = 0, os.getcwd()
  try:
    sys.argv = [module, *args]
    os.chdir(ROOT)  # as the subprocesses run: configs/ and runs/ are relative to it
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      runpy.run_module(module, run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else int(e.code is not None)
  finally:
    os.chdir(cwd)
    sys.argv = saved_argv
    os.environ.pop(cli.TRACEBACK_ENV, None)
    if saved_env is not None:
      os.environ[cli.TRACEBACK_ENV] = saved_env
    if os.environ != saved_environ:
      os.environ.clear()
      os.environ.update(saved_environ)
    for name in set(flags.FLAGS) - before:
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)
    for module_name, flag in hidden:
      flags.FLAGS[flag.name] = flag
      flags.FLAGS.register_flag_by_module(module_name, flag)
    flags.FLAGS.unparse_flags()
    if was_parsed:
      flags.FLAGS.mark_as_parsed()
  return code, out.getvalue(), err.getvalue()


def masked_keep(model, params, method, batch) -> np.ndarray:
  """<bool>[layers, batch, seq]: the tokens the masked model (the hard stage's
  evaluation) keeps after each layer, at their original positions."""
  import jax  # pylint: disable=import-outside-toplevel

  def keep(params, ids, mask, types):
    out = model.apply({"params": params["model"]}, ids, mask, types, deterministic=True,
                      prune_fn=method.prune_fn(params["pruning"], "hard"))
    return [m > 0 for m in out.token_masks]

  inputs = (batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
  return np.stack(jax.device_get(jax.jit(keep)(params, *inputs)))
