"""Nested, seeded training subsets (1 / 10 / 100 %) written next to converted shards.

The downstream protocols (BenchX, MGCA, LoVT) train their heads on 1 %, 10 % and 100 % of a
data set's training split. This module fixes those subsets as data, so that every method is
scored on the same images:

  <dataset_dir>/subsets_<split>.json
    {"format": "mmrl_subsets", "version": 1, "split": "train", "num_examples": N,
     "stratify": "...", "method": "...", "fractions": [1, 10, 100], "seeds": [0],
     "subsets": {"0": {"1": {"seed": 0, "fraction": 1, "count": 7, "ids": [...]}, ...}}}

`ids` are `image/id`s in the split's record order. Fractions are percentages.

How a subset is drawn (`nested_order`, pure): every example has a stratum (`stratum_of`: whether
it has boxes / masks, and its first positive label); within each stratum the examples are put in
a seeded random order, and the strata are interleaved by systematic sampling (the j-th of n_s
members of stratum s sits at position (j + u_s) / n_s, u_s a seeded offset in [0, 1)). A subset
of fraction f is the first `subset_size(f, N)` = max(1, ceil(f * N / 100)) examples of that one
order, so 1 % ⊂ 10 % ⊂ 100 % for a seed by construction, each prefix holds every stratum within
one example of its proportional share, and a tiny split still gets one example per fraction.

- `stratum_of`, `nested_order`, `subset_size`, `make_subsets`: pure functions.
- `read_split_examples`: (ids, strata) of a converted split, in record order.
- `subsets_path`, `write_subsets`, `read_subsets`, `ensure_subsets`, `subset_ids`: the file.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Iterable, Optional, Sequence

import numpy as np

from data_pipeline import record_spec

FORMAT = "mmrl_subsets"
VERSION = 1
STRATIFY = ("annotation kind (boxes / masks / none) x first positive label of labels/values "
            "(or '-'), systematic interleaving of the strata")
METHOD = ("one seeded order per seed (numpy default_rng(seed)); subset(f) = the first "
          "max(1, ceil(f/100 * N)) examples of it, so smaller fractions are prefixes of larger "
          "ones")


def stratum_of(rec: record_spec.StudyRecord, label_names: Sequence[str]) -> str:
  """The stratum of one record: '<boxes|masks|boxes+masks|none>/<first positive label or ->'."""
  kind = "+".join(k for k, v in (("boxes", rec.boxes), ("masks", rec.masks_png)) if v) or "none"
  label = "-"
  if rec.labels is not None and np.size(rec.labels):
    pos = np.flatnonzero(np.asarray(rec.labels, np.float32).reshape(-1) == 1)
    if len(pos) and int(pos[0]) < len(label_names):
      label = str(label_names[int(pos[0])])
  return f"{kind}/{label}"


def nested_order(strata: Sequence[str], seed: int) -> np.ndarray:
  """A seeded order of the examples 0..N-1 whose every prefix is stratified (module docstring).

  Deterministic in (strata, seed); equal strata lists give equal orders on every machine."""
  strata = [str(s) for s in strata]
  n = len(strata)
  if n == 0:
    return np.zeros(0, np.int64)
  rng = np.random.default_rng(int(seed))
  names = sorted(set(strata))
  members = {s: np.flatnonzero(np.asarray(strata, dtype=object) == s) for s in names}
  keys = np.zeros(n, np.float64)
  tiebreak = rng.permutation(n)  # ties between strata at the same position: seeded
  for s in names:
    rows = rng.permutation(members[s])
    offset = rng.random()
    keys[rows] = (np.arange(len(rows)) + offset) / len(rows)
  return np.lexsort((tiebreak, keys)).astype(np.int64)


def subset_size(fraction: float, n: int) -> int:
  """max(1, ceil(fraction / 100 * n)), at most n (fraction in percent, 0 < fraction <= 100)."""
  if not 0 < float(fraction) <= 100:
    raise ValueError(f"subset fraction {fraction} must be a percentage in (0, 100], "
                     "e.g. --fractions=1,10,100")
  if n <= 0:
    return 0
  # Round before ceil so that 10 % of 70 is 7, not 8 through 7.000000000000001.
  return min(n, max(1, math.ceil(round(float(fraction) * n / 100, 9))))


def make_subsets(ids: Sequence[str], strata: Sequence[str], fractions: Iterable[float],
                 seeds: Iterable[int], *, split: str = "train") -> dict:
  """The subsets document (module docstring) for examples `ids` with their `strata`."""
  ids = [str(i) for i in ids]
  if len(ids) != len(strata):
    raise ValueError(f"{len(ids)} ids but {len(strata)} strata")
  if len(set(ids)) != len(ids):
    raise ValueError("image ids repeat in the split; subsets name examples by image/id, which "
                     "must be unique (re-run the converter)")
  fractions = sorted({_pct(f) for f in fractions})
  seeds = sorted({int(s) for s in seeds})
  out = {"format": FORMAT, "version": VERSION, "split": split, "num_examples": len(ids),
         "stratify": STRATIFY, "method": METHOD, "fractions": fractions, "seeds": seeds,
         "strata": {s: int(c) for s, c in zip(*np.unique(np.asarray(strata, dtype=str),
                                                             return_counts=True))}
         if len(ids) else {}, "subsets": {}}
  for seed in seeds:
    order = nested_order(strata, seed)
    per = {}
    for f in fractions:
      k = subset_size(f, len(ids))
      rows = np.sort(order[:k])
      per[_key(f)] = {"seed": seed, "fraction": f, "count": int(k),
                      "ids": [ids[i] for i in rows]}
    out["subsets"][str(seed)] = per
  return out


def _pct(f: float) -> float | int:
  f = float(f)
  subset_size(f, 1)  # validates
  return int(f) if f == int(f) else f


def _key(f: float) -> str:
  return f"{_pct(f):g}"


def read_split_examples(dataset_dir: str | os.PathLike, split: str = "train"
                        ) -> tuple[list[str], list[str]]:
  """(image ids, strata) of a converted split, in record order (the order evaluators read)."""
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline import records  # pylint: disable=g-import-not-at-top
  info = pipeline.dataset_info(dataset_dir)
  source = pipeline.split_source(dataset_dir, split, info)
  ids, strata = [], []
  for i in range(len(source)):
    rec = records.parse_record(source[i], item=f"{dataset_dir}:{split}#{i}")
    ids.append(rec.image_id)
    strata.append(stratum_of(rec, info["label_names"]))
  return ids, strata


def subsets_path(dataset_dir: str | os.PathLike, split: str = "train") -> pathlib.Path:
  return pathlib.Path(dataset_dir) / f"subsets_{split}.json"


def write_subsets(dataset_dir: str | os.PathLike, fractions: Iterable[float],
                  seeds: Iterable[int], split: str = "train") -> pathlib.Path:
  """Computes the subsets of `split` and writes subsets_<split>.json (atomically)."""
  ids, strata = read_split_examples(dataset_dir, split)
  doc = make_subsets(ids, strata, fractions, seeds, split=split)
  path = subsets_path(dataset_dir, split)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(doc, indent=1) + "\n")
  tmp.replace(path)
  return path


def read_subsets(dataset_dir: str | os.PathLike, split: str = "train") -> Optional[dict]:
  """The subsets document of `split`, or None when the file does not exist."""
  path = subsets_path(dataset_dir, split)
  if not path.is_file():
    return None
  doc = json.loads(path.read_text())
  if doc.get("format") != FORMAT or doc.get("version") != VERSION:
    raise ValueError(f"{path} is not an mmrl subsets file of version {VERSION} "
                     f"(format={doc.get('format')!r}, version={doc.get('version')!r}); delete it "
                     "and it is rewritten")
  return doc


def ensure_subsets(dataset_dir: str | os.PathLike, fractions: Iterable[float],
                   seeds: Iterable[int], split: str = "train") -> dict:
  """The subsets document, (re)written when missing or lacking a fraction / seed asked for.

  Rewriting keeps every subset already in the file (the order depends only on the seed and the
  split), and refuses when the split changed since the file was written."""
  fractions, seeds = [_pct(f) for f in fractions], [int(s) for s in seeds]
  doc = read_subsets(dataset_dir, split)
  if doc is not None and all(str(s) in doc["subsets"] and _key(f) in doc["subsets"][str(s)]
                             for s in seeds for f in fractions):
    return doc
  ids, strata = read_split_examples(dataset_dir, split)
  if doc is not None:
    if doc["num_examples"] != len(ids):
      raise ValueError(f"{subsets_path(dataset_dir, split)} was written for {doc['num_examples']} "
                       f"examples but split {split!r} now has {len(ids)}; the shards changed: "
                       "delete the subsets file to draw new subsets")
    fractions = sorted(set(fractions) | set(doc["fractions"]))
    seeds = sorted(set(seeds) | set(doc["seeds"]))
  new = make_subsets(ids, strata, fractions, seeds, split=split)
  if doc is not None:
    for s, per in doc["subsets"].items():
      for f, entry in per.items():
        if new["subsets"][s][f]["ids"] != entry["ids"]:
          raise ValueError(f"{subsets_path(dataset_dir, split)}: seed {s}, {f} % differs from a "
                           "fresh draw; the shards changed: delete the file to draw new subsets")
  path = subsets_path(dataset_dir, split)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(new, indent=1) + "\n")
  tmp.replace(path)
  return new


def subset_ids(doc: dict, fraction: float, seed: int) -> list[str]:
  """The ids of (fraction %, seed) in a subsets document."""
  per = doc["subsets"].get(str(int(seed)))
  if per is None or _key(fraction) not in per:
    raise KeyError(f"the subsets file has no subset for {fraction} % and seed {seed}; it holds "
                   f"fractions {doc['fractions']} and seeds {doc['seeds']} (ensure_subsets adds "
                   "missing ones)")
  return list(per[_key(fraction)]["ids"])


__all__ = ["stratum_of", "nested_order", "subset_size", "make_subsets", "read_split_examples",
           "subsets_path", "write_subsets", "read_subsets", "ensure_subsets", "subset_ids"]
