"""Our BERT text tower -> a Hugging Face `BertModel` folder (the reverse of hf_weights.py).

`to_hf_state_dict(tower_params)` renames the tower's parameters to PyTorch `BertModel` names and
transposes Dense kernels [in, out] back to Linear weights [out, in]:
  embeddings/{word,position,token_type}_embeddings/embedding  embeddings.*_embeddings.weight
  embeddings/norm/{scale,bias}                                 embeddings.LayerNorm.{weight,bias}
  layer_i/attention/{query,key,value}/{kernel,bias}            encoder.layer.i.attention.self.*
  layer_i/attention/out                                        encoder.layer.i.attention.output.dense
  layer_i/attention_norm                                       encoder.layer.i.attention.output.LayerNorm
  layer_i/intermediate                                         encoder.layer.i.intermediate.dense
  layer_i/output                                               encoder.layer.i.output.dense
  layer_i/output_norm                                          encoder.layer.i.output.LayerNorm
`hf_config(bert_config)` is the matching config.json; `write_hf_folder` writes both (as
model.safetensors) so that `transformers.BertModel.from_pretrained(folder)` loads the encoder.
The pooler (`pooler.dense`) is not part of our tower: transformers initialises it randomly and
says so; the tower's outputs are the last hidden states, pooled as the export's
encoder_config.json says (`global_pool`).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import numpy as np

from mmrl.models.bert import BertConfig
from mmrl.models.hf_weights import flatten_params

_EMBED = {"word_embeddings": "word_embeddings", "position_embeddings": "position_embeddings",
          "token_type_embeddings": "token_type_embeddings"}
_LAYER = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "out"): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}



def to_hf_state_dict(tower_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The text tower's params (its own subtree) as a float32 `BertModel` state dict.

  Raises:
    ValueError: a parameter has no HF name (the tree is not a BERT text tower's).
  """
  out: dict[str, np.ndarray] = {}
  unknown = []
  for path, value in flatten_params(tower_params).items():
    value = np.asarray(value, np.float32)
    module, leaf = path[:-1], path[-1]
    name = None
    if module[:1] == ("embeddings",) and len(module) == 2:
      if module[1] == "norm":
        name = "embeddings.LayerNorm"
      elif module[1] in _EMBED:
        name = f"embeddings.{_EMBED[module[1]]}"
    elif module and module[0].startswith("layer_") and module[0][6:].isdigit():
      sub = _LAYER.get(module[1:])
      if sub is not None:
        name = f"encoder.layer.{int(module[0][6:])}.{sub}"
    if name is None or leaf not in _LEAF:
      unknown.append("/".join(path))
      continue
    out[f"{name}.{_LEAF[leaf]}"] = value.T if leaf == "kernel" else value
  if unknown:
    raise ValueError(f"{len(unknown)} text-tower parameters have no Hugging Face BertModel name: "
                     f"{', '.join(unknown[:10])}; only the BERT tower (embeddings, layer_i) "
                     "can be exported this way")
  return out


def hf_config(cfg: BertConfig, *, pad_token_id: int = 0) -> dict[str, Any]:
  """The config.json of a `BertModel` with `cfg`'s sizes."""
  return {
      "architectures": ["BertModel"],
      "model_type": "bert",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "hidden_act": cfg.hidden_act,
      "hidden_dropout_prob": 0.1,
      "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size,
      "initializer_range": 0.02,
      "layer_norm_eps": cfg.layer_norm_eps,
      "pad_token_id": int(pad_token_id),
      "position_embedding_type": "absolute",
      "torch_dtype": "float32",
  }


def write_hf_folder(folder: str | pathlib.Path, tower_params: Mapping[str, Any], cfg: BertConfig,
                    *, pad_token_id: int = 0) -> pathlib.Path:
  """Writes `<folder>/model.safetensors` + `<folder>/config.json`; returns the folder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  state = to_hf_state_dict(tower_params)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(hf_config(cfg, pad_token_id=pad_token_id),
                                                 indent=2) + "\n")
  return folder
