"""Parameter (and optimiser-state) shardings from regex rules over '/'-joined tree paths.

A rule is `(regex, spec)`; the first rule whose regex `re.search`es the leaf's path wins. `spec` is
a `PartitionSpec`, or `FSDP` (the default heuristic: shard the largest axis divisible by the
'fsdp' axis size along 'fsdp' when the leaf has >= `min_size` elements and rank 2 or 4, else
replicate). Leaves no rule matches are replicated.

Paths are those of the TrainState ('params/image_tower/conv1/kernel'); optimiser state leaves carry
the parameter path as a suffix ('opt_state/2/.../mu/image_tower/conv1/kernel'), so the same rules
give Adam moments the same sharding as their parameters: write rules as suffix patterns
(r'text_tower/embeddings/word_embeddings/embedding$'), never anchored with '^'. Scalars (step,
counts) are replicated.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmrl.config_errors import ConfigError


class _Fsdp:
  """Sentinel spec: the shape-based FSDP heuristic (see module docstring)."""

  def __repr__(self) -> str:
    return "FSDP"


FSDP = _Fsdp()
Rule = tuple[str, Any]  # (regex over the path, PartitionSpec | FSDP)

DEFAULT_MIN_SIZE = 2 ** 14


def default_rules() -> list[Rule]:
  """Every leaf through the FSDP heuristic (small and 1-D/3-D leaves end up replicated)."""
  return [(".*", FSDP)]


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined key path of a pytree leaf ('params/image_tower/conv1/kernel')."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = DEFAULT_MIN_SIZE) -> P:
  """The FSDP heuristic for one leaf shape (see module docstring)."""
  size = 1
  for d in shape:
    size *= d
  if fsdp_size <= 1 or len(shape) not in (2, 4) or size < min_size:
    return P()
  candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp_size == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def spec_for(path: str, shape: Sequence[int], rules: Sequence[Rule], mesh: Mesh,
             min_size: int = DEFAULT_MIN_SIZE) -> P:
  """The PartitionSpec of one leaf under `rules`."""
  for regex, spec in rules:
    if re.search(regex, path):
      if spec is FSDP:
        return fsdp_spec(shape, mesh.shape.get("fsdp", 1), min_size)
      if not isinstance(spec, P):
        raise ConfigError(f"sharding rule {regex!r} has spec {spec!r}; use a PartitionSpec or "
                          f"mmrl.parallel.sharding.FSDP")
      _check_divisible(path, shape, spec, mesh, regex)
      return spec
  return P()


def _check_divisible(path: str, shape: Sequence[int], spec: P, mesh: Mesh, regex: str) -> None:
  if len(spec) > len(shape):
    raise ConfigError(f"sharding rule {regex!r} gives {spec} to {path} of rank {len(shape)}; "
                      f"use a spec with at most {len(shape)} entries")
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    n = 1
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      n *= mesh.shape[a]
    if dim % n:
      raise ConfigError(f"sharding rule {regex!r} splits a dimension of size {dim} of {path} "
                        f"{tuple(shape)} over {n} devices; change the rule or config.mesh")


def tree_specs(tree: Any, mesh: Mesh, rules: Sequence[Rule] | None = None,
               min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  rules = default_rules() if rules is None else rules
  return jax.tree_util.tree_map_with_path(
      lambda p, x: spec_for(path_str(p), getattr(x, "shape", ()), rules, mesh, min_size), tree)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule] | None = None,
                   min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  specs = tree_specs(tree, mesh, rules, min_size)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(tree: Any, mesh: Mesh, rules: Sequence[Rule] | None = None,
                 min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """Places `tree` on `mesh` with the shardings from `rules`."""
  return jax.device_put(tree, tree_shardings(tree, mesh, rules, min_size))
