"""Fuzzing (hypothesis, derandomized and bounded): report parsing, sentence splitting and
tokenisation on arbitrary text, and DICOM decoding on mutated bytes of the shared test files —
only the project's own error types (data_pipeline.errors.InputError) may escape."""
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipeline import errors
from data_pipeline import reports
from data_pipeline import tokenization
from data_pipeline.dicom_decode import decode_dicom

FUZZ = settings(derandomize=True, deadline=None, max_examples=50, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Report-like text: section headers, punctuation and whitespace mixed into arbitrary unicode.
_PIECES = st.sampled_from(["FINDINGS:", "IMPRESSION:", "INDICATION:", "COMPARISON:", "___", ".",
                           "\n\n", "\r\n", "1. ", "2)", "Dr.", "e.g.", " - ", "?", "!", ";",
                           "no pneumothorax", "  ", "\t", "\x00", "\u2028", "\ufeff", "Mr. ___"])
REPORT_TEXT = st.lists(st.one_of(st.text(max_size=40), _PIECES), max_size=25).map("".join)


@FUZZ
@given(REPORT_TEXT)
def test_report_parsing_raises_only_report_errors(text):
  try:
    parsed = reports.parse_report(text, item_id="fuzz")
  except errors.ReportError:
    return
  assert parsed.sentences and len(parsed.sentences) == len(parsed.sentence_sections)
  assert all(s.strip() for s in parsed.sentences)


@FUZZ
@given(st.binary(max_size=300))
def test_report_parsing_of_arbitrary_bytes_raises_only_report_errors(raw):
  try:
    reports.parse_report(raw, item_id="fuzz")
  except errors.ReportError:
    pass


@FUZZ
@given(REPORT_TEXT)
def test_sentence_splitting_never_raises_and_returns_non_empty_sentences(text):
  sentences = reports.split_sentences(text)
  assert all(isinstance(s, str) and s.strip() for s in sentences)


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.ReportTokenizer()


@FUZZ
@given(st.lists(REPORT_TEXT, max_size=12))
def test_tokenisation_of_arbitrary_sentences_keeps_the_fixed_shapes(tokenizer, sentences):
  out = tokenizer.encode(sentences, 64, 8)
  for key in ("input_ids", "attention_mask", "token_to_sentence", "token_to_word"):
    assert out[key].shape == (64,) and out[key].dtype == np.int32, key
  assert out["token_to_sentence"].max() < 8
  assert np.all(out["attention_mask"][out["token_to_sentence"] >= 0] == 1)


# ---- DICOM decoding on mutated bytes ---------------------------------------------------------

def _dicom_files(shared):
  files = sorted(p for p in (shared / "dicom").glob("*.dcm") if p.stat().st_size < 250_000)
  if not files:
    pytest.skip(f"no small .dcm files under {shared / 'dicom'}")
  return [p.read_bytes() for p in files]


@pytest.fixture(scope="module")
def dicom_bytes(shared_data):
  return _dicom_files(shared_data)


def _mutate(data: bytes, draw) -> bytes:
  data = bytearray(data)
  kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
  # Most of the structure is in the first few KB (preamble, meta header, element headers).
  head = min(len(data), 4096)
  if kind == "truncate":
    return bytes(data[:draw(st.integers(0, len(data) - 1))])
  for _ in range(draw(st.integers(1, 8))):
    pos = draw(st.integers(0, (head if draw(st.booleans()) else len(data)) - 1))
    if kind == "flip":
      data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "insert":
      data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    elif len(data) > 1:
      del data[pos:pos + draw(st.integers(1, 8))]
  return bytes(data)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_dicom_decoding_of_mutated_files_raises_only_input_errors(dicom_bytes, data):
  original = data.draw(st.sampled_from(dicom_bytes))
  mutated = _mutate(original, data.draw)
  try:
    out = decode_dicom(mutated, item_id="fuzz")
  except errors.InputError:
    return
  assert out.image.ndim == 2 and out.image.size > 0
  assert np.all(np.isfinite(out.image))
