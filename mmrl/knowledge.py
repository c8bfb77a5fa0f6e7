"""The MLIP knowledge vocabulary (METHODS.md §8.2): findings with CheXpert labels and descriptions.

File format (JSON), default `data_pipeline/knowledge/chest_xray_findings.json`; users replace it
with `config.method.knowledge_path`:

    {"findings": [{"name": "Pleural effusion", "chexpert_label": "Pleural Effusion",
                   "descriptions": ["Pleural effusion: fluid in the pleural space, ..."]}, ...]}

`load_knowledge(path)` validates it (errors name the file and the key); `knowledge_tokens`
tokenises every description once with `ReportTokenizer` (cached per path/tokenizer/length), giving
the static int32 [K * D, L] arrays the MLIP heads feed through the text tower (D = the largest
number of descriptions; a finding with fewer has padded rows, `description_mask` False).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import numpy as np

DEFAULT_KNOWLEDGE_PATH = (pathlib.Path(__file__).resolve().parent.parent / "data_pipeline" /
                          "knowledge" / "chest_xray_findings.json")
MAX_DESCRIPTIONS = 3


class KnowledgeError(ValueError):
  """A knowledge file that cannot be used (the message names the file and the key)."""


@dataclasses.dataclass(frozen=True)
class Finding:
  name: str
  chexpert_label: str
  descriptions: tuple[str, ...]


def resolve_path(path: str | pathlib.Path = "") -> pathlib.Path:
  """'' -> the shipped vocabulary; else the given path."""
  return DEFAULT_KNOWLEDGE_PATH if not str(path) else pathlib.Path(path)


def load_knowledge(path: str | pathlib.Path = "") -> tuple[Finding, ...]:
  """Reads and validates a knowledge file (module docstring).

  Raises:
    KnowledgeError: the file is missing, not JSON, or a key is missing / of the wrong type.
  """
  p = resolve_path(path)
  fix = "(set config.method.knowledge_path to a valid file, or '' for the shipped one)"
  if not p.is_file():
    raise KnowledgeError(f"knowledge file {p} does not exist {fix}")
  try:
    data = json.loads(p.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise KnowledgeError(f"knowledge file {p} is not valid JSON: {e} {fix}") from None
  if not isinstance(data, dict) or not isinstance(data.get("findings"), list) or not data[
      "findings"]:
    raise KnowledgeError(f"knowledge file {p}: key 'findings' must be a non-empty list of "
                         f"{{name, chexpert_label, descriptions}} objects {fix}")
  out = []
  for i, f in enumerate(data["findings"]):
    where = f"knowledge file {p}: findings[{i}]"
    if not isinstance(f, dict):
      raise KnowledgeError(f"{where} must be an object, got {type(f).__name__} {fix}")
    for key in ("name", "chexpert_label"):
      if not isinstance(f.get(key), str) or not f[key].strip():
        raise KnowledgeError(f"{where}.{key} must be a non-empty string, got {f.get(key)!r} "
                             f"{fix}")
    desc = f.get("descriptions")
    if (not isinstance(desc, list) or not 1 <= len(desc) <= MAX_DESCRIPTIONS or
        not all(isinstance(d, str) and d.strip() for d in desc)):
      raise KnowledgeError(f"{where}.descriptions must be a list of 1-{MAX_DESCRIPTIONS} "
                           f"non-empty strings, got {desc!r} {fix}")
    out.append(Finding(f["name"], f["chexpert_label"], tuple(desc)))
  names = [f.name for f in out]
  if len(set(names)) != len(names):
    raise KnowledgeError(f"knowledge file {p}: finding names repeat ({names}) {fix}")
  return tuple(out)


@functools.lru_cache(maxsize=8)
def knowledge_tokens(path: str = "", tokenizer: str = "", max_tokens: int = 64
                     ) -> dict[str, np.ndarray]:
  """Token ids of every description, tokenised once (cached).

  Returns:
    input_ids, attention_mask, token_to_sentence int32 [K * D, max_tokens] (finding-major: row
    k * D + j is description j of finding k; padded rows hold only [CLS] [SEP]), and
    description_mask bool [K, D].
  """
  from data_pipeline.tokenization import ReportTokenizer  # pylint: disable=g-import-not-at-top
  findings = load_knowledge(path)
  d = max(len(f.descriptions) for f in findings)
  texts = [[f.descriptions[j]] if j < len(f.descriptions) else [] for f in findings
           for j in range(d)]
  enc = ReportTokenizer(tokenizer).encode_batch(texts, max_tokens, 1)
  mask = np.array([[j < len(f.descriptions) for j in range(d)] for f in findings], bool)
  return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
          "token_to_sentence": enc["token_to_sentence"], "description_mask": mask}


__all__ = ["Finding", "KnowledgeError", "load_knowledge", "knowledge_tokens", "resolve_path",
           "DEFAULT_KNOWLEDGE_PATH"]
