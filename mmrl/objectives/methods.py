"""Methods: a name -> (heads on top of the towers, weighted objectives from the config).

A method is a `Method` subclass registered in `METHODS`:

    @METHODS.register("convirt")
    class ConVIRT(Method):
      def apply_heads(self, image, text, batch, *, train, dtype) -> dict: ...

`apply_heads` runs inside `TwoTowerModel.__call__` (a compact Linen context): it creates the
method's heads as named submodules (their params appear as 'image_projection/...', ...) and returns
the extra outputs the objectives read ('image_embed', 'text_embed', 'log_tau', ...).

The objectives and their weights/options come from `config.method.objectives`, a list of
ConfigDicts `{name, weight, **options}`; `total_loss` sums them (metrics namespaced
'<name>/<metric>', plus '<name>/loss' and the total 'loss'). Objectives are looked up in
`mmrl.objectives.registry.OBJECTIVES`.

EMA teacher: a method whose objectives read a momentum teacher returns True from
`uses_teacher()` (by default: some objective entry has target='teacher'). The train step then
runs `TwoTowerModel(..., teacher=True)` with the EMA variables (config.train.ema) under
stop_gradient (only the towers in `teacher_towers`, then `teacher_heads`) and hands the result to
the objectives as `outputs['teacher']` (a dict). Methods that do not use it pay nothing.

Options, declared in one place each (config validation checks configs against them, with a
did-you-mean, and the code reads the defaults from there, never from scattered `.get` defaults):
- a method's own keys `config.method.<key>` (beyond base.py's name, embed_dim,
  projection_hidden, projection_norm, objectives): the class attribute `Method.options`,
  {key: default} (a dict value is a group `config.method.<group>.<key>`); `self.cfg` is
  config.method with these defaults filled in. Adding one = one line in that dict.
- an objective's options: its signature (`registry.declared_options`); `objective_options` and
  `Method.objectives()` return them with the defaults filled in. Adding one = one keyword
  parameter with its default.

New method = a `Method` subclass registered here (a large one may live in its own module, imported
at the bottom of this file) + its objectives registered in `mmrl/objectives/<family>.py` (listed in
`registry.BUILTIN_MODULES`) + `experiments/configs/<method>.py` setting `config.method`.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mmrl.config_errors import ConfigError
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives.registry import (Metrics, accepts_any_option, declared_options,
                                      get_objective, objective_names)
from mmrl.registry import Registry

_RESERVED = ("name", "weight")


def _to_json(cfg: Any) -> str:
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_json_best_effort(sort_keys=True)
  return json.dumps(cfg, sort_keys=True)


def _with_defaults(user: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`user` (a dict tree) over `defaults`: missing keys and group members get their default."""
  out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in defaults.items()}
  for key, value in user.items():
    if isinstance(out.get(key), dict) and isinstance(value, Mapping):
      out[key] = _with_defaults(value, out[key])
    else:
      out[key] = value
  return out


@dataclasses.dataclass(frozen=True)
class Method:
  """Base class: holds `config.method` as JSON (hashable: the model is a jit-static field);
  `self.cfg` is the ConfigDict view with the declared `options` defaults filled in."""
  cfg_json: str

  # config.method.<key> options of this method beyond base.py's common keys: {key: default};
  # the default's type is the option's type, a dict is a group (module docstring).
  options: ClassVar[Mapping[str, Any]] = {}

  @functools.cached_property
  def cfg(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_with_defaults(json.loads(self.cfg_json), self.options))

  def objectives(self) -> list[tuple[str, float, dict[str, Any]]]:
    """(name, weight, options) for each entry of `config.method.objectives`."""
    return parse_objectives(self.cfg)

  # A method whose heads need the running model (e.g. to run its text tower on constant
  # knowledge texts, MLIP) sets this; TwoTowerModel then passes `model=self` to apply_heads.
  uses_model: ClassVar[bool] = False

  def apply_heads(self, image: ImageFeatures, text: TextFeatures, batch: Mapping[str, Any], *,
                  train: bool, dtype: Any) -> dict[str, Any]:
    raise NotImplementedError

  # The towers the EMA teacher's forward pass runs; a tower not listed reaches `teacher_heads`
  # as None (PLACE's CCE target needs only the image tower).
  teacher_towers: ClassVar[tuple[str, ...]] = ("image", "text")

  def uses_teacher(self) -> bool:
    """Whether the objectives read `outputs['teacher']`: some objective has target='teacher'."""
    return any(options.get("target") == "teacher" for _, _, options in self.objectives())

  def teacher_heads(self, image: ImageFeatures | None, text: TextFeatures | None,
                    batch: Mapping[str, Any], *, train: bool, dtype: Any,
                    **kwargs: Any) -> dict[str, Any]:
    """The teacher's outputs (run with the EMA variables; default: the online heads)."""
    return self.apply_heads(image, text, batch, train=train, dtype=dtype, **kwargs)

  def check_config(self, config: Any) -> None:
    """Raises ConfigError when the rest of `config` (e.g. config.data) cannot serve this method
    as configured; called by `mmrl.train.validation.validate_config`. Default: no constraint."""
    del config

  def learnable_tau(self) -> float | None:
    """The initial tau when some objective has learnable_tau=True, else None."""
    for _, _, options in self.objectives():
      if options.get("learnable_tau"):
        return float(options["tau"])
    return None


METHODS: Registry[type[Method]] = Registry("method")


def teacher_outputs(outputs: Mapping[str, Any], teacher_key: str, keys: tuple[str, ...],
                    objective: str) -> Mapping[str, Any]:
  """outputs[teacher_key] (the EMA teacher's forward, added by the train step), checked to hold
  `keys`; for objectives with target='teacher'."""
  teacher = outputs.get(teacher_key)
  if teacher is None:
    raise ConfigError(f"{objective} target='teacher' needs outputs[{teacher_key!r}], the EMA "
                      "teacher's outputs, which the train step adds when config.train.ema."
                      f"enabled=True; known outputs: {sorted(outputs)}")
  missing = [k for k in keys if k not in teacher]
  if missing:
    raise ConfigError(f"{objective}: the teacher outputs lack {missing}; known: {sorted(teacher)}")
  return teacher


def parse_objectives(method_cfg: Any) -> list[tuple[str, float, dict[str, Any]]]:
  """Validates `config.method.objectives` into (name, weight, options) triples; options are the
  objective's declared options (its signature) with the entry's values over the defaults.

  Raises:
    ConfigError: no objectives, an entry without a known 'name', or an option the objective
      does not declare (with a did-you-mean) or of the wrong type.
  """
  entries = method_cfg.objectives
  if not entries:
    raise ConfigError("config.method.objectives is empty; list at least one objective, e.g. "
                      "[dict(name='clip_nce', weight=1.0, tau=0.1)]")
  out = []
  for i, entry in enumerate(entries):
    entry = dict(entry.items()) if hasattr(entry, "items") else dict(entry)
    if "name" not in entry:
      raise ConfigError(f"config.method.objectives[{i}]={entry} has no 'name'; known objectives: "
                        f"{', '.join(objective_names())}")
    name = entry["name"]
    try:
      get_objective(name)
    except KeyError as e:
      raise ConfigError(f"config.method.objectives[{i}].name={name!r}: {e.args[0]}") from None
    weight = float(entry.get("weight", 1.0))
    given = {k: v for k, v in entry.items() if k not in _RESERVED}
    declared = declared_options(name)
    _check_objective_options(i, name, given, declared)
    out.append((name, weight, {**declared, **given}))
  return out


def _check_objective_options(i: int, name: str, given: Mapping[str, Any],
                             declared: Mapping[str, Any]) -> None:
  from mmrl.config.checks import check_type  # pylint: disable=g-import-not-at-top
  fn = get_objective(name)
  where = f"{fn.__module__}.{fn.__name__}"
  for key, value in given.items():
    if key in declared:
      check_type(f"method.objectives[{i}].{key}", value, declared[key])
    elif not accepts_any_option(name):
      near = difflib.get_close_matches(key, list(declared) + list(_RESERVED), n=1, cutoff=0.6)
      hint = f"did you mean {near[0]!r}? " if near else ""
      raise ConfigError(
          f"config.method.objectives[{i}] ({name}) has no option {key!r}; {hint}{name}'s "
          f"options (the keyword arguments of {where}): "
          f"{', '.join(sorted(declared)) or '(none)'}, plus 'weight'")


def objective_options(method_cfg: Any, name: str) -> dict[str, Any] | None:
  """The options (declared defaults filled in) of the first `config.method.objectives` entry
  named `name`, or None when no entry is."""
  for obj_name, _, options in parse_objectives(method_cfg):
    if obj_name == name:
      return options
  return None


def method_options(name: str) -> Mapping[str, Any]:
  """{key: default} of method `name`'s own config.method keys (`Method.options`)."""
  from mmrl.objectives import registry  # pylint: disable=g-import-not-at-top
  registry.import_builtin()
  try:
    return METHODS.get(name).options
  except KeyError as e:
    raise ConfigError(f"config.method.name={name!r}: {e.args[0]}") from None


def method_config(method_cfg: Any) -> ml_collections.ConfigDict:
  """`config.method` with its method's declared option defaults filled in (for code that reads
  a method's options without building the method, e.g. the alignment maps)."""
  user = method_cfg.to_dict() if hasattr(method_cfg, "to_dict") else dict(method_cfg)
  return ml_collections.ConfigDict(_with_defaults(user, method_options(str(method_cfg.name))))


def get_method(method_cfg: Any) -> Method:
  """The `Method` named by `config.method.name`, holding `config.method`."""
  from mmrl.objectives import registry  # pylint: disable=g-import-not-at-top
  registry.import_builtin()  # method families register themselves on import
  try:
    cls = METHODS.get(method_cfg.name)
  except KeyError as e:
    raise ConfigError(f"config.method.name={method_cfg.name!r}: {e.args[0]}") from None
  return cls(_to_json(method_cfg))


def total_loss(outputs: Mapping[str, Any], batch: Mapping[str, Any], config: Any,
               rng: jax.Array) -> tuple[jax.Array, Metrics]:
  """Weighted sum of `config.method.objectives` on the model outputs.

  Args:
    outputs: `TwoTowerModel` outputs.
    batch: the global batch.
    config: the full config (reads `config.method.objectives`) or `config.method` itself.
    rng: the step's loss key; objective i gets `fold_in(rng, i)`.

  Returns:
    (loss f32[], metrics) with '<objective>/<metric>', '<objective>/loss' and 'loss'.
  """
  method_cfg = config.method if hasattr(config, "method") else config
  total = jnp.zeros((), jnp.float32)
  metrics: Metrics = {}
  seen: dict[str, int] = {}
  batch = dict(batch)
  for i, (name, weight, options) in enumerate(parse_objectives(method_cfg)):
    fn = get_objective(name)
    loss, m = fn(dict(outputs), batch, rng=jax.random.fold_in(rng, i), **options)
    loss = jnp.asarray(loss, jnp.float32)
    key = name if name not in seen else f"{name}_{seen[name]}"
    seen[name] = seen.get(name, 0) + 1
    metrics[f"{key}/loss"] = loss
    for k, v in m.items():
      metrics[f"{key}/{k}"] = v
    total = total + weight * loss
  metrics["loss"] = total
  return total, metrics


@METHODS.register("convirt")
class ConVIRT(Method):
  """ConVIRT (METHODS.md §2): MLP projections of both globals + clip_nce(tau 0.1, lambda 0.75).

  Reads config.method.{embed_dim, projection_hidden, projection_norm}. Outputs 'image_embed',
  'text_embed' [B, embed_dim] (un-normalised; the objective normalises), and 'log_tau' when an
  objective asks for a learnable temperature.
  """

  def apply_heads(self, image, text, batch, *, train, dtype):
    del batch
    c = self.cfg
    out = {}
    for side, feats in (("image", image), ("text", text)):
      proj = MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim),
                           norm=str(c.projection_norm), dtype=dtype, name=f"{side}_projection")
      out[f"{side}_embed"] = proj(feats.global_embedding, train=train)
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out
