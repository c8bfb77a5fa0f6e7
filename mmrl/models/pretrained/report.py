"""What an import did with each tensor (ImportReport), and the all-or-nothing fit check.

A mapping function turns a source state dict into our variables as a flat {our path tuple: array}
and records, per source tensor name, whether it was imported or left unused (with the reason).
`check_fit` then compares the result against the tower's expected shapes: every parameter of ours
must be filled with the right shape, otherwise WeightsMismatchError names the first missing and
mismatched tensors and nothing is returned (the caller's variables stay untouched).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from mmrl.models.param_tree import flatten, unflatten


@dataclasses.dataclass
class ImportReport:
  """Accounting of one import.

  imported:   source tensor names that went into our variables.
  unused:     source tensor name -> why it was not imported (a head we do not have, a counter, ...).
  missing:    our variable paths ('params/stem_conv/kernel') that no source tensor filled.
  mismatched: our path -> 'ours (shape) vs source NAME (shape)'.
  notes:      transformations applied (RGB kernels summed, normalisation folded, grid resized).
  """
  source: str = ""
  imported: list[str] = dataclasses.field(default_factory=list)
  unused: dict[str, str] = dataclasses.field(default_factory=dict)
  missing: list[str] = dataclasses.field(default_factory=list)
  mismatched: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.missing and not self.mismatched

  def summary(self) -> str:
    return (f"{self.source}: {len(self.imported)} tensors imported, {len(self.unused)} unused, "
            f"{len(self.missing)} missing, {len(self.mismatched)} mismatched")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class WeightsMismatchError(ValueError):
  """The source does not fit the tower; `.report` holds the full accounting."""

  def __init__(self, message: str, report: ImportReport):
    super().__init__(message)
    self.report = report






def check_fit(converted: Mapping[tuple[str, ...], np.ndarray],
              sources: Mapping[tuple[str, ...], str], expected: Mapping[str, Any],
              report: ImportReport, *, what: str, strict: bool = True) -> dict[str, Any]:
  """Nested variables from `converted` after checking them against `expected` (a variables tree
  of arrays or ShapeDtypeStructs, e.g. from jax.eval_shape of the tower's init).

  `sources` maps each converted path to the source tensor name it came from (for messages).
  Converted paths that the tower does not have are reported unused. With strict=True (default),
  any missing or mismatched parameter raises WeightsMismatchError naming the first ones.
  """
  want = flatten(expected)
  want = dict(sorted(want.items(), key=lambda kv: kv[0][0] != "params"))  # params first
  for path, value in converted.items():
    if path not in want:
      report.unused[sources.get(path, "/".join(path))] = (
          f"no parameter {'/'.join(path)} in the {what}")
  for path, spec in want.items():
    name = "/".join(path)
    if path not in converted:
      report.missing.append(name)
    elif tuple(converted[path].shape) != tuple(spec.shape):
      report.mismatched[name] = (f"ours {tuple(spec.shape)} vs source {sources.get(path, '?')} "
                                 f"{tuple(converted[path].shape)}")
  if strict and not report.ok:
    parts = []
    if report.missing:
      parts.append(f"{len(report.missing)} parameters missing (first: "
                   + ", ".join(report.missing[:5]) + ")")
    if report.mismatched:
      first = list(report.mismatched.items())[:5]
      parts.append(f"{len(report.mismatched)} shape mismatches (first: "
                   + "; ".join(f"{k}: {v}" for k, v in first) + ")")
    raise WeightsMismatchError(
        f"{report.source or 'the source'} does not fit the {what}: " + " | ".join(parts)
        + ". Is it a checkpoint of this architecture (config.model.image.name)?", report)
  used = {sources.get(p, "/".join(p)) for p in converted if p in want}
  report.imported = sorted(used)
  for name in used:
    report.unused.pop(name, None)  # e.g. pos_embed feeds both `cls` and `pos_embedding`
  return unflatten({p: np.asarray(converted[p], np.float32) for p in want if p in converted})
