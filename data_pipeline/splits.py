"""Train/validate/test splits of the downstream data sets: shipped lists and seeded ones.

Owns `--split_source=official|lovt|benchx` (docs/data_format.md, "Downstream layouts"):
* `read_split_list`: a list shipped under data_pipeline/split_lists/ (`<dataset>_<source>.txt`):
  `# key: value` header lines (source repository and commit, files, the authors' counts, what
  unlisted images get, licence) then one `<split> <image id>` line per listed image. The lists
  hold only the ids a source moves out of the converter's default split (e.g. validate + test;
  `unlisted: train`), which keeps them small.
* `seeded_split`: a reproducible split of ids by a seed and the published counts/fractions, for
  sources whose list cannot be used on the official download (BenchX's SIIM list names the PNGs
  of a Kaggle re-release, not the DICOM ImageIds) -- documented as differing from the authors'.
* `summary`: what goes into mmrl_dataset_info.json["converter"]["split"]: the source, its file or
  seed, the authors' counts and the counts found in this download.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np

SPLIT_SOURCES = ("official", "lovt", "benchx")
LIST_DIR = pathlib.Path(__file__).resolve().parent / "split_lists"
_SPLITS = ("train", "validate", "test")


@dataclasses.dataclass(frozen=True)
class SplitList:
  """A shipped split list: image id -> split, plus its header."""
  path: str
  assign: dict[str, str]
  header: dict[str, str]

  @property
  def expected(self) -> dict[str, int]:
    """The authors' split sizes from the `counts:` header line."""
    out = {}
    for part in self.header.get("counts", "").split():
      key, _, value = part.partition("=")
      out[key] = int(value)
    return out


def list_path(dataset: str, source: str) -> pathlib.Path:
  return LIST_DIR / f"{dataset}_{source}.txt"


def read_split_list(path: str | pathlib.Path) -> SplitList:
  """Parses a split list file (module docstring). Raises ValueError naming a bad line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"split list {str(path)!r} does not exist")
  header: dict[str, str] = {}
  assign: dict[str, str] = {}
  for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    if line.startswith("#"):
      key, sep, value = line[1:].strip().partition(":")
      if sep and not line.startswith("#  ") and key.strip() not in header:
        header[key.strip()] = value.strip()
      continue
    parts = line.split()
    if len(parts) != 2 or parts[0] not in _SPLITS:
      raise ValueError(f"{path}:{n}: {line!r} is not '<train|validate|test> <image id>'")
    if parts[1] in assign:
      raise ValueError(f"{path}:{n}: image id {parts[1]!r} is listed twice")
    assign[parts[1]] = parts[0]
  return SplitList(str(path), assign, header)


def seeded_split(ids: Sequence[str], proportions: Mapping[str, float], seed: int
                 ) -> dict[str, str]:
  """A reproducible split of `ids` in the given proportions (counts or fractions).

  The ids are sorted, shuffled by numpy's PCG64 generator seeded with `seed`, and cut in the
  order train, validate, test with sizes round(n * p / sum(p)) (test takes the remainder), so the
  result depends only on the set of ids, the proportions and the seed.
  """
  unique = sorted(set(ids))
  order = np.random.default_rng(seed).permutation(len(unique))
  weights = np.asarray([float(proportions.get(s, 0.0)) for s in _SPLITS])
  if weights.sum() <= 0 or (weights < 0).any():
    raise ValueError(f"split proportions {dict(proportions)} must be >= 0 and not all 0")
  n_train = int(round(len(unique) * weights[0] / weights.sum()))
  n_val = int(round(len(unique) * weights[1] / weights.sum()))
  n_val = min(n_val, len(unique) - n_train)
  out = {}
  for rank, i in enumerate(order):
    out[unique[i]] = ("train" if rank < n_train else
                      "validate" if rank < n_train + n_val else "test")
  return out


def hash_fraction_split(key: str, fractions: Sequence[float], seed: int) -> str:
  """Deterministic split of one key by sha256(seed/key): for carving a validation set from an
  official train set patient by patient (fractions = train, validate, test)."""
  h = int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big") / 2.0**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  for split, edge in zip(_SPLITS, edges):
    if h < edge:
      return split
  return _SPLITS[-1]


def check_source(dataset: str, source: str, available: Sequence[str]) -> str:
  """Validates `source` for `dataset`; '' -> the first available one."""
  if not source:
    return available[0]
  if source not in SPLIT_SOURCES:
    raise ValueError(f"split_source={source!r}; use one of {', '.join(SPLIT_SOURCES)}")
  if source not in available:
    raise ValueError(f"{dataset} has no {source!r} split (the {source} authors do not use it or "
                     f"it has none); available: {', '.join(available)}")
  return source


def summary(source: str, splits: Mapping[str, str], *, how: str,
            split_list: Optional[SplitList] = None, seed: Optional[int] = None,
            expected: Optional[Mapping[str, int]] = None,
            not_listed: Optional[int] = None) -> dict:
  """The `split` entry of the converter metadata: source, provenance, expected and found sizes.

  `splits` maps every listed image id of this download to its split (before --max_items / view
  filtering; mmrl_dataset_info.json["splits"] has the records actually written). `not_listed`:
  images of the download a `unlisted: left out` list does not name (not converted).
  """
  found = {s: 0 for s in _SPLITS}
  for s in splits.values():
    found[s] += 1
  out = {"source": source, "how": how, "found": found}
  if split_list is not None:
    out["file"] = pathlib.Path(split_list.path).name
    out["list_source"] = split_list.header.get("source", "")
    out["listed_ids_not_in_download"] = sum(1 for i in split_list.assign if i not in splits)
  if not_listed is not None:
    out["download_ids_not_in_list"] = not_listed
  if seed is not None:
    out["seed"] = seed
  exp = dict(expected) if expected is not None else (
      split_list.expected if split_list is not None else None)
  if exp:
    out["expected"] = exp
  return out
