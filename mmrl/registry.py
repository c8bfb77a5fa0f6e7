"""Name registries: a dict plus a decorator; unknown names list the known ones."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects (objectives, towers, methods, evaluators).

  >>> OBJECTIVES = Registry("objective")
  >>> @OBJECTIVES.register("clip_nce")
  ... def clip_nce(...): ...
  >>> OBJECTIVES.get("clip_nse")  # KeyError lists the known names
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(obj: T) -> T:
      if name in self._items:
        raise KeyError(f"{self.kind} {name!r} is registered twice; pick another name")
      self._items[name] = obj
      return obj
    return add

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      known = ", ".join(sorted(self._items)) or "(none registered)"
      raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: Any) -> bool:
    return name in self._items
