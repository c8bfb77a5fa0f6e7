"""Reading released checkpoints safely, and accounting for every tensor they hold.

`load_torch_file(path)` reads a `torch.save` file (a PyTorch Lightning `.ckpt`, a bare state dict
`.pt`/`.bin`) without running the authors' code and without their packages installed: it first
tries `torch.load(weights_only=True)`; when the file pickles other classes (Lightning's
`AttributeDict`, OmegaConf's `DictConfig` or an `argparse.Namespace` in `hyper_parameters`) it
reads it again with an unpickler that allows only torch's tensor-rebuilding functions and plain
containers and turns every other class into an inert `Opaque` record (no code of that class runs).
`plain(obj)` turns those records back into dicts where their state is a mapping (enough to read
hyper-parameters). A truncated or non-torch file raises `SourceError` naming the file.

`read_safetensors_or_bin(folder)` reads an HF folder's weights (model.safetensors, else
pytorch_model.bin through `load_torch_file`).

`Ledger` is the accounting: every tensor of the source (the model's state dict *and* everything
else in the file, such as optimiser moments) is either `imported` under our parameter path or
`dropped` with a reason; `Ledger.check_complete()` fails if any tensor was neither, so an
importer cannot silently ignore a tensor. `Ledger.report()` is the import report (JSON-able).
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import pickle
from typing import Any, Iterator, Mapping

import numpy as np


class SourceError(ValueError):
  """The input is not a readable checkpoint of the expected format (message says what to do)."""


class Opaque:
  """An object of a class we do not import: its constructor args and pickled state, inert."""
  _qualname = "?"

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.kwargs = args, kwargs
    obj.state, obj.items, obj.list = None, {}, []
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs  # recorded by __new__ (pickle's NEWOBJ skips __init__)

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.list.append(value)

  def extend(self, values):
    self.list.extend(values)

  def __repr__(self):
    return f"Opaque({self._qualname})"


_OPAQUE_CLASSES: dict[str, type] = {}


def _opaque_class(module: str, name: str) -> type:
  key = f"{module}.{name}"
  if key not in _OPAQUE_CLASSES:
    _OPAQUE_CLASSES[key] = type(name, (Opaque,), {"_qualname": key})
  return _OPAQUE_CLASSES[key]


_ALLOWED_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str",
                     "bytes", "bytearray", "complex", "slice", "range", "object"}


def _allowed(module: str, name: str) -> bool:
  if module == "collections" and name in ("OrderedDict", "defaultdict"):
    return True
  if module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS:
    return True
  if module == "torch._utils" and name.startswith("_rebuild"):
    return True
  if module == "torch" and (name.endswith("Storage") or name in ("Size", "device", "dtype")
                            or name in ("float32", "float16", "bfloat16", "float64", "int64",
                                        "int32", "int16", "int8", "uint8", "bool")):
    return True
  if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
    return True
  if module == "numpy.core.multiarray" and name in ("_reconstruct", "scalar"):
    return True
  if module in ("numpy", "numpy.dtype") and name in ("ndarray", "dtype"):
    return True
  if module.startswith("numpy.dtypes"):
    return True
  return False


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if _allowed(module, name):
      return super().find_class(module, name)
    return _opaque_class(module, name)


class _RestrictedPickleModule:
  """The `pickle_module` torch.load is given: its Unpickler is `_RestrictedUnpickler`."""
  Unpickler = _RestrictedUnpickler
  load = pickle.load
  __name__ = "mmrl_restricted_pickle"


def load_torch_file(path: str | pathlib.Path) -> Any:
  """The object in a `torch.save` file, tensors as torch tensors (module docstring)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SourceError(f"{path} does not exist or is not a file")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SourceError(f"reading {path} (a PyTorch file) needs torch; install it "
                      "(pip install 'mmrl[torch]')") from None
  try:
    return torch.load(str(path), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    pass  # classes outside the weights-only allow-list: read again with inert placeholders
  except Exception as e:  # pylint: disable=broad-except
    raise SourceError(f"{path} cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                      f"{_first_line(e)}); the file is truncated or not a torch.save file - "
                      "download it again") from None
  try:
    return torch.load(str(path), map_location="cpu", weights_only=False,
                      pickle_module=_RestrictedPickleModule)
  except Exception as e:  # pylint: disable=broad-except
    raise SourceError(f"{path} cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                      f"{_first_line(e)}); the file is truncated or not a torch.save file - "
                      "download it again") from None


def plain(obj: Any, _depth: int = 0) -> Any:
  """Opaque records (OmegaConf DictConfig / ListConfig, Namespace, AttributeDict) -> dicts and
  lists where their state is a mapping / list (enough to read hyper-parameters). OmegaConf's
  `_parent` back-links are not followed; nesting deeper than 64 levels is refused."""
  if _depth > 64:
    raise SourceError("hyper-parameters nest deeper than 64 levels (a cyclic object?)")
  down = _depth + 1
  if isinstance(obj, Opaque):
    if obj.items:
      return {k: plain(v, down) for k, v in obj.items.items()}
    if obj.list:
      return [plain(v, down) for v in obj.list]
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
      state = state[1]  # (dict state, slot state)
    if isinstance(state, Mapping):
      if "_content" in state:  # OmegaConf container (DictConfig / ListConfig)
        return plain(state["_content"], down)
      if "_val" in state:  # OmegaConf value node
        return plain(state["_val"], down)
      return {k: plain(v, down) for k, v in state.items() if not str(k).startswith("_")}
    return None
  if isinstance(obj, Mapping):
    return {k: plain(v, down) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [plain(v, down) for v in obj]
  return obj


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor or array as a float32 (floating) / integer numpy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      return value.float().numpy()
    return value.numpy()
  arr = np.asarray(value)
  return arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr


def is_tensor(value: Any) -> bool:
  return hasattr(value, "detach") and hasattr(value, "shape") or isinstance(value, np.ndarray)


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted path, tensor) for every tensor nested anywhere in `obj` (dicts, lists, records).

  Each container is visited once (pickled object graphs may share or cycle: an OmegaConf node
  links to its parent, `_parent`, which is skipped as it is never data of its own)."""
  seen: set[int] = set()
  stack: list[tuple[str, Any]] = [(prefix, obj)]
  while stack:
    path, node = stack.pop()
    if is_tensor(node):
      yield path, node
      continue
    if isinstance(node, (Opaque, Mapping, list, tuple)):
      if id(node) in seen:
        continue
      seen.add(id(node))
    children: list[tuple[str, Any]] = []
    if isinstance(node, Opaque):
      for name, part in (("args", node.args), ("state", node.state), ("items", node.items),
                         ("list", node.list)):
        children.append((f"{path}.<{name}>" if path else f"<{name}>", part))
    elif isinstance(node, Mapping):
      for k, v in node.items():
        if k == "_parent":
          continue
        children.append((f"{path}.{k}" if path else str(k), v))
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        children.append((f"{path}.{i}" if path else str(i), v))
    stack.extend(reversed(children))


def read_safetensors_or_bin(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """(state dict as numpy, the file read) of an HF folder."""
  st = folder / "model.safetensors"
  if st.is_file():
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      return dict(load_file(str(st))), st
    except Exception as e:  # pylint: disable=broad-except
      raise SourceError(f"{st} cannot be read as safetensors ({type(e).__name__}: "
                        f"{_first_line(e)}); the file is truncated or damaged - download it "
                        "again") from None
  pt = folder / "pytorch_model.bin"
  if pt.is_file():
    state = load_torch_file(pt)
    if not isinstance(state, Mapping):
      raise SourceError(f"{pt} does not hold a state dict (found {type(state).__name__})")
    return {k: to_numpy(v) for k, v in state.items() if is_tensor(v)}, pt
  raise SourceError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else repr(e)


@dataclasses.dataclass
class Ledger:
  """Every tensor of a source, imported (-> our path) or dropped (with a reason)."""
  shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
  imported: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  dropped: dict[str, str] = dataclasses.field(default_factory=dict)

  def add(self, name: str, value: Any) -> None:
    self.shapes[name] = tuple(int(d) for d in np.shape(value))

  def add_all(self, obj: Any, prefix: str = "") -> None:
    for name, value in iter_tensors(obj, prefix):
      self.add(name, value)

  def take(self, name: str, target: str) -> None:
    if name not in self.shapes:
      raise KeyError(f"the importer read {name!r}, which the source does not hold")
    self.imported.setdefault(name, []).append(target)

  def drop(self, name: str, reason: str) -> None:
    if name not in self.shapes:
      raise KeyError(f"the importer dropped {name!r}, which the source does not hold")
    if name not in self.imported:
      self.dropped[name] = reason

  def drop_rest(self, prefix: str, reason: str) -> None:
    """Drops every not yet accounted tensor whose name starts with `prefix`."""
    for name in self.shapes:
      if name.startswith(prefix) and name not in self.imported and name not in self.dropped:
        self.dropped[name] = reason

  def unaccounted(self) -> list[str]:
    return [n for n in self.shapes if n not in self.imported and n not in self.dropped]

  def check_complete(self, source: str) -> None:
    rest = self.unaccounted()
    if rest:
      raise SourceError(f"{source}: {len(rest)} tensor(s) the importer neither maps nor knows "
                        f"to drop: {', '.join(rest[:12])}{' ...' if len(rest) > 12 else ''}. "
                        "This is not the checkpoint layout the importer was written for")

  def report(self) -> dict[str, Any]:
    reasons = collections.Counter(self.dropped.values())
    return {
        "counts": {"tensors": len(self.shapes), "imported": len(self.imported),
                   "dropped": len(self.dropped),
                   "imported_values": int(sum(int(np.prod(self.shapes[n]))
                                              for n in self.imported)),
                   "dropped_values": int(sum(int(np.prod(self.shapes[n]))
                                             for n in self.dropped))},
        "dropped_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "imported": {n: {"shape": list(self.shapes[n]), "to": t}
                     for n, t in self.imported.items()},
        "dropped": {n: {"shape": list(self.shapes[n]), "reason": r}
                    for n, r in self.dropped.items()},
    }
