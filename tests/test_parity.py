"""Parity of the Flax encoder with the PyTorch reference (transformers)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tpjax  # pylint: disable=g-import-not-at-top
from tpjax.models import hf_weights  # pylint: disable=g-import-not-at-top
from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top

TOL = 1e-4
SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given "
    "the production 's austere locales .",
    "a",
]


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_minilm_hidden_states_match_pytorch():
  model, params, tokenizer = tpjax.load_pretrained("minilm-l6")
  batch = tokenizer(SENTENCES)
  assert batch["attention_mask"].min() == 0, "the batch must contain padding"
  ours = model.apply({"params": params}, **batch, deterministic=True).last_hidden_state

  ref = transformers.BertModel.from_pretrained(pretrained.resolve("minilm-l6")).eval()
  with torch.no_grad():
    theirs = ref(**{k: torch.from_numpy(v).long() for k, v in batch.items()}).last_hidden_state
  mask = batch["attention_mask"].astype(bool)
  diff = _max_diff(np.asarray(ours)[mask], theirs.numpy()[mask])
  print(f"MiniLM-L6 last_hidden_state max abs diff (real tokens): {diff:.2e}")
  assert diff <= TOL


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.RobertaConfig(
      vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
      pad_token_id=1, num_labels=3)
  ref = transformers.RobertaForSequenceClassification(cfg).eval()
  directory = tmp_path_factory.mktemp("roberta")
  ref.save_pretrained(directory, safe_serialization=True)
  return str(directory), ref


def test_random_roberta_matches_pytorch(roberta_dir):
  directory, ref = roberta_dir
  model, params = hf_weights.load_hf_model(directory, num_labels=3)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 100, size=(3, 12)).astype(np.int32)
  ids[:, 0] = 0
  mask = np.ones_like(ids)
  for row, n in enumerate((12, 7, 3)):
    ids[row, n:] = 1  # RoBERTa's pad id
    mask[row, n:] = 0
  out = model.apply({"params": params}, input_ids=ids, attention_mask=mask,
                    deterministic=True, output_hidden_states=True)
  with torch.no_grad():
    theirs = ref(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
  real = mask.astype(bool)
  hidden_diff = max(_max_diff(np.asarray(a)[real], b.numpy()[real])
                    for a, b in zip(out.hidden_states, theirs.hidden_states, strict=True))
  logit_diff = _max_diff(out.logits, theirs.logits.numpy())
  print(f"RoBERTa hidden states max abs diff: {hidden_diff:.2e}; logits: {logit_diff:.2e}")
  assert hidden_diff <= TOL
  assert logit_diff <= TOL
