"""Nested parameter dicts <-> flat {path tuple: leaf} dicts: the one helper every weight importer
(Hugging Face BERT, torchvision / timm image towers, released checkpoints) and the export use."""
from __future__ import annotations

from typing import Any, Mapping


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """{'a': {'b': x}} -> {('a', 'b'): x} (Mapping nodes are descended, anything else is a leaf)."""
  out: dict[tuple[str, ...], Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """{('a', 'b'): x} -> {'a': {'b': x}} (the inverse of `flatten`)."""
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


__all__ = ["flatten", "unflatten"]
