"""Type checks of one config value against its schema default, shared by the objectives layer
(`Method` / objective options) and the train layer's config validation (mmrl.train.validation)."""
from __future__ import annotations

from typing import Any

from mmrl.config_errors import ConfigError


def check_type(path: str, value: Any, default: Any) -> None:
  """Raises ConfigError when `value` (at config.`path`) does not have the type of `default`
  (an int is fine for a float, a list for a tuple; a None default accepts anything)."""
  if default is None:
    return
  want = type(default)
  ok: bool
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
    want = tuple
  else:
    ok = isinstance(value, want)
  if not ok:
    raise ConfigError(f"config.{path}={value!r} has type {type(value).__name__}, but it must be "
                      f"{want.__name__} (default {default!r}); e.g. --config.{path}={default!r}")
