"""The objective registry: loss functions by name.

Every objective has ONE signature:

    fn(outputs: dict, batch: dict, *, rng: jax.Array, **options) -> (loss f32[], metrics dict)

- `outputs` is what `TwoTowerModel.__call__` returns: the tower features ('image': ImageFeatures,
  'text': TextFeatures) plus whatever the method's heads add ('image_embed', 'text_embed',
  'log_tau', attention maps, ...). Learnable loss parameters (temperatures, prototypes, critics)
  live in heads, so they arrive through `outputs`; an objective owns no parameters.
- `batch` is the global batch (data_pipeline/batch_spec.py) for masks: 'valid', 'sentence_mask',
  'attention_mask', 'study_id', ...
- `rng` is a per-step, per-objective key (objectives that need none ignore it).
- `options` are the objective's entry in `config.method.objectives` minus 'name' and 'weight'
  (e.g. tau=0.1, image_to_text_weight=0.75). An objective DECLARES its options in one place, its
  signature: every keyword parameter after `rng`, with its default (the default's type is the
  option's type). `declared_options(name)` reads them; config validation refuses an option the
  signature does not name (with a did-you-mean) or of the wrong type, and heads that read an
  objective's options (`methods.objective_options`) get these defaults filled in. Adding an
  option = adding one keyword parameter with its default.
- Returned metrics are un-namespaced ('loss', 'acc_i2t', ...); `methods.total_loss` prefixes
  them with the objective's name. All loss math is float32; masks use a finite -1e9.
- Objectives never see sharding: they compute on global arrays and XLA inserts the collectives.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import jax

from mmrl.registry import Registry

Metrics = dict[str, jax.Array]
Objective = Callable[..., tuple[jax.Array, Metrics]]

OBJECTIVES: Registry[Objective] = Registry("objective")


# Loss-family modules that register objectives on import; a new family adds its module here.
# Each loss family's module; importing one registers its objectives (and its Method, if any).
BUILTIN_MODULES = (
    "mmrl.objectives.contrastive",
    "mmrl.objectives.lovt",
    "mmrl.objectives.gloria",
    "mmrl.objectives.mgca",
    "mmrl.objectives.local_mi",
    "mmrl.objectives.place",
    "mmrl.objectives.mlip",
    "mmrl.objectives.lrclr",
    "mmrl.objectives.biovil",
    "mmrl.objectives.open_clip",
)


def import_builtin() -> None:
  """Imports every built-in loss family (registers their objectives and methods)."""
  for module in BUILTIN_MODULES:
    importlib.import_module(module)


def get_objective(name: str) -> Objective:
  """The objective registered as `name` (imports the built-in loss families first)."""
  import_builtin()
  return OBJECTIVES.get(name)


def objective_names() -> list[str]:
  """Names of all registered objectives (built-in families included)."""
  import_builtin()
  return OBJECTIVES.names()


@functools.lru_cache(maxsize=None)
def _declared(fn: Objective) -> tuple[tuple[tuple[str, Any], ...], bool]:
  params = inspect.signature(fn).parameters.values()
  named = tuple((p.name, p.default) for p in params
                if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "rng")
  missing = [n for n, d in named if d is inspect.Parameter.empty]
  if missing:
    raise TypeError(f"objective {fn.__module__}.{fn.__name__}: options {missing} have no "
                    "default; every option needs one (registry module docstring)")
  return named, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def declared_options(name: str) -> dict[str, Any]:
  """{option: default} of objective `name`: its keyword parameters after `rng` (module
  docstring). An objective taking **kwargs also accepts options not listed here."""
  return dict(_declared(get_objective(name))[0])


def accepts_any_option(name: str) -> bool:
  """Whether objective `name` takes **kwargs (then undeclared options are not refused)."""
  return _declared(get_objective(name))[1]


__all__ = ["OBJECTIVES", "Objective", "Metrics", "get_objective", "objective_names",
           "declared_options", "accepts_any_option"]
