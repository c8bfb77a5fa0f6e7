"""Pieces shared by the format importers: the BERT tower, heads (Linear, 1x1 conv, the MGCA/BioViL
MLP with BatchNorm), and the result type.

All mappings read a flat `{name: numpy}` state dict, write our flat `{('params', ...): value}` /
`{('batch_stats', ...): value}` paths and record each source name in the `Ledger`.

BatchNorm after a biased Linear / conv: our `MLPProjection(norm='batch')` has no bias on its first
Dense (a bias before BatchNorm is redundant), so the source bias b is folded into the running mean
(mean' = mean - b). Eval mode: (Wx + b - mean) / sqrt(var + eps) = (Wx - mean') / sqrt(var + eps),
exactly; train mode normalises with the batch's own mean, from which a constant bias cancels.

`fill(ours, converted)` checks an imported flat tree against the model's own parameters: every
leaf of ours must be given with its exact shape, and nothing else may be given; the error lists
the first missing, mismatched and unexpected paths.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from mmrl.models import hf_weights
from mmrl.models.param_tree import flatten, unflatten
from mmrl.models.released.source import Ledger, SourceError

Flat = dict[tuple[str, ...], np.ndarray]
BERT_DEFAULTS = {"max_position_embeddings": 512, "type_vocab_size": 2}


@dataclasses.dataclass
class Converted:
  """An importer's result: config overrides (dotted keys), our params / batch_stats (flat paths
  without the collection name), the ledger, and notes for the report."""
  format: str
  source: str
  overrides: dict[str, Any]
  params: Flat
  batch_stats: Flat
  ledger: Ledger
  notes: list[str]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # format facts for the report

  def report(self) -> dict[str, Any]:
    return {"format": self.format, "source": self.source, "notes": self.notes, **self.extra,
            "config_overrides": self.overrides, **self.ledger.report()}


def fill(ours: Mapping[str, Any], converted: Flat, *, what: str, source: str) -> dict[str, Any]:
  """`ours` (a param / batch_stats tree of arrays or ShapeDtypeStructs) with every leaf replaced
  by `converted`'s (float32 numpy); errors name what is missing, mismatched or unexpected."""
  flat = flatten(ours)
  missing = [p for p in flat if p not in converted]
  extra = [p for p in converted if p not in flat]
  mismatched = [f"{'/'.join(p)}: ours {tuple(flat[p].shape)} vs imported "
                f"{tuple(converted[p].shape)}" for p in flat
                if p in converted and tuple(flat[p].shape) != tuple(converted[p].shape)]
  if missing or extra or mismatched:
    parts = []
    if missing:
      parts.append(f"missing ({len(missing)}): " + ", ".join("/".join(p) for p in missing[:8]))
    if mismatched:
      parts.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
    if extra:
      parts.append(f"unexpected ({len(extra)}): " + ", ".join("/".join(p) for p in extra[:8]))
    raise SourceError(f"{source} does not fit the model's {what}: " + " | ".join(parts))
  return unflatten({p: np.asarray(converted[p], np.float32) for p in flat})


def strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """The entries under `prefix` with it removed."""
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def require(state: Mapping[str, Any], names: list[str], *, fmt: str, source: str,
            hint: str) -> None:
  """Fails naming the expected keys when the state dict is not of format `fmt`."""
  missing = [n for n in names if n not in state]
  if missing:
    sample = ", ".join(list(state)[:6])
    raise SourceError(f"{source} is not a {fmt} checkpoint: it lacks {', '.join(missing[:4])} "
                      f"(found keys like {sample or 'none'}). {hint}")


# ----------------------------------------------------------------------------------------------
# BERT.

def bert_sizes(state: Mapping[str, np.ndarray], prefix: str, *, num_heads: int | None,
               source: str, token_types: bool = True) -> dict[str, int]:
  """Tower sizes read from the tensors under `prefix` (a BertModel's names). The head count is
  not in the tensors: `num_heads` or hidden // 64 (BERT's head size). `token_types=False`: the
  BERT has no token-type table (BLIP's med.py, MGCA); `convert_bert(..., token_types=False)`
  then imports a zero table."""
  try:
    vocab, hidden = state[prefix + "embeddings.word_embeddings.weight"].shape
    positions = state[prefix + "embeddings.position_embeddings.weight"].shape[0]
    types = (state[prefix + "embeddings.token_type_embeddings.weight"].shape[0] if token_types
             else BERT_DEFAULTS["type_vocab_size"])
    intermediate = state[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]
  except KeyError as e:
    raise SourceError(f"{source}: the BERT under {prefix!r} lacks {e.args[0]!r}") from None
  layers = 1 + max(int(m.group(1)) for k in state
                   if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k)))
  for key, value in (("max_position_embeddings", positions), ("type_vocab_size", types)):
    if value != BERT_DEFAULTS[key]:
      raise SourceError(f"{source}: the BERT's {key}={value}, but mmrl's randomly-initialised text "
                        f"tower (config.model.text with weights='') has {BERT_DEFAULTS[key]}")
  heads = int(num_heads) if num_heads else max(1, int(hidden) // 64)
  if hidden % heads:
    raise SourceError(f"{source}: text hidden size {hidden} is not a multiple of num_heads={heads}"
                      "; pass --text_num_heads")
  return {"vocab_size": int(vocab), "hidden_size": int(hidden), "num_layers": int(layers),
          "num_heads": heads, "intermediate_size": int(intermediate)}


def bert_overrides(sizes: Mapping[str, int]) -> dict[str, Any]:
  return {"model.text.weights": "", **{f"model.text.{k}": v for k, v in sizes.items()}}


TOKEN_TYPE_PATH = ("text_tower", "embeddings", "token_type_embeddings", "embedding")
POSITION_PATH = ("text_tower", "embeddings", "position_embeddings", "embedding")


def convert_bert(state: Mapping[str, np.ndarray], prefix: str, ledger: Ledger,
                 params: Flat, *, unused: Mapping[str, str], token_types: bool = True) -> None:
  """Maps the BertModel under `prefix` into params['text_tower', ...] (hf_weights' names).
  `unused`: {regex on the name after prefix: reason} for tensors that the forward never reads.
  `token_types=False`: the source has no token-type table; ours gets zeros (type_vocab_size
  rows), so that word + position embeddings are exactly the source's."""
  if not token_types:
    hidden = int(np.shape(state[prefix + "embeddings.word_embeddings.weight"])[1])
    params[TOKEN_TYPE_PATH] = np.zeros((BERT_DEFAULTS["type_vocab_size"], hidden), np.float32)
  for name, value in state.items():
    if not name.startswith(prefix):
      continue
    short = name[len(prefix):]
    reason = next((r for pat, r in unused.items() if re.search(pat, short)), None)
    if reason is not None:
      ledger.drop(name, reason)
      continue
    mapped = hf_weights.convert_state_dict({short: value})
    if len(mapped) != 1:
      continue  # left for check_complete to report
    (path, array), = mapped.items()
    params[("text_tower",) + path] = array
    ledger.take(name, "params/text_tower/" + "/".join(path))


# ----------------------------------------------------------------------------------------------
# Heads.

def linear(state, name: str, target: tuple[str, ...], ledger: Ledger, params: Flat, *,
           bias: bool = True) -> None:
  """torch Linear / 1x1 Conv1d / 1x1 Conv2d `name` -> Dense `target` (kernel [in, out])."""
  w = np.asarray(state[name + ".weight"], np.float32)
  w = w.reshape(w.shape[0], -1)  # [out, in(, 1, 1)] -> [out, in]
  params[target + ("kernel",)] = w.T
  ledger.take(name + ".weight", "params/" + "/".join(target) + "/kernel")
  if bias:
    params[target + ("bias",)] = np.asarray(state[name + ".bias"], np.float32)
    ledger.take(name + ".bias", "params/" + "/".join(target) + "/bias")


def batch_norm(state, name: str, target: tuple[str, ...], ledger: Ledger, params: Flat,
               stats: Flat, *, affine: bool = True, fold_bias: np.ndarray | None = None,
               fold_from: str | None = None) -> None:
  """torch BatchNorm `name` -> our BatchNorm `target` (scale/bias params, mean/var stats)."""
  t = "/".join(target)
  if affine:
    params[target + ("scale",)] = np.asarray(state[name + ".weight"], np.float32)
    params[target + ("bias",)] = np.asarray(state[name + ".bias"], np.float32)
    ledger.take(name + ".weight", f"params/{t}/scale")
    ledger.take(name + ".bias", f"params/{t}/bias")
  mean = np.asarray(state[name + ".running_mean"], np.float32)
  if fold_bias is not None:
    mean = mean - fold_bias
    ledger.take(fold_from, f"batch_stats/{t}/mean (folded: mean - bias)")
  stats[target + ("mean",)] = mean
  stats[target + ("var",)] = np.asarray(state[name + ".running_var"], np.float32)
  ledger.take(name + ".running_mean", f"batch_stats/{t}/mean")
  ledger.take(name + ".running_var", f"batch_stats/{t}/var")
  if name + ".num_batches_tracked" in state:
    ledger.drop(name + ".num_batches_tracked",
                "BatchNorm step counter (not used at inference)")


def mlp_bn_head(state, name: str, target: str, ledger: Ledger, params: Flat, stats: Flat, *,
                first_bias: bool, output_norm: bool) -> tuple[int, int]:
  """`name`.{0: Linear/conv, 1: BatchNorm, 3: Linear/conv, [4: BatchNorm(affine=False)]} ->
  MLPProjection(norm='batch', output_norm='batch' without affine | 'none') `target`.
  Returns (hidden, out)."""
  w0 = np.asarray(state[f"{name}.0.weight"])
  w1 = np.asarray(state[f"{name}.3.weight"])
  linear(state, f"{name}.0", (target, "dense_0"), ledger, params, bias=False)
  bias0 = np.asarray(state[f"{name}.0.bias"], np.float32) if first_bias else None
  batch_norm(state, f"{name}.1", (target, "norm"), ledger, params, stats, fold_bias=bias0,
             fold_from=f"{name}.0.bias" if first_bias else None)
  linear(state, f"{name}.3", (target, "dense_1"), ledger, params)
  if output_norm:
    batch_norm(state, f"{name}.4", (target, "output_norm"), ledger, params, stats, affine=False)
  return int(w0.shape[0]), int(w1.shape[0])
