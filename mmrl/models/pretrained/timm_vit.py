"""timm ViT / DeiT and Hugging Face ViTModel state dicts -> our ViT variables.

timm (vit_base_patch16_224, deit_base_patch16_224, ...)     -> ours (Linear [out, in] transposed)
  patch_embed.proj.{weight,bias}                               params/patch_embedding/{kernel,bias}
  cls_token [1,1,D] + pos_embed[:, 0]                          params/cls
  pos_embed[:, prefix:] [1, N, D] as a grid, resized           params/pos_embedding [1, gh, gw, D]
  blocks.i.norm1 / norm2                                       params/block_i/norm1 / norm2
  blocks.i.attn.qkv [3D, D] split in q, k, v                   params/block_i/attention/{query,key,value}
  blocks.i.attn.proj                                           params/block_i/attention/out
  blocks.i.mlp.fc1 / fc2                                       params/block_i/mlp/fc1 / fc2
  norm                                                         params/final_norm
Hugging Face ViTModel (an optional leading 'vit.' is detected), Hub file names (transformers 5's
in-memory names in brackets: layers.i.attention.{q,k,v,o}_proj, layers.i.mlp.fc{1,2}):
  embeddings.cls_token, embeddings.position_embeddings, embeddings.patch_embeddings.projection
  encoder.layer.i.layernorm_before / layernorm_after           norm1 / norm2
  encoder.layer.i.attention.attention.{query,key,value}        attention/{query,key,value}
  encoder.layer.i.attention.output.dense                       attention/out
  encoder.layer.i.intermediate.dense / output.dense            mlp/fc1 / mlp/fc2
  layernorm                                                    final_norm
Unused: head.*, fc_norm.* (classifier), pooler.* (HF), embeddings.mask_token, dist_token
(DeiT-distilled's second token; its position embedding is dropped with it).

Our [CLS] has no position embedding of its own: cls + pos[0] is one constant, so folding it in
is exact. When the image grid differs from the checkpoint's, the patch position embeddings are
resized as timm's `resample_abs_pos_embed` does (bicubic, antialiased, align_corners=False;
jax.image.resize matches torch's within ~2e-6), once, at import. LayerNorm epsilon: timm 1e-6, HF
1e-12 (config.json `layer_norm_eps`): build the tower with that `norm_eps`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.models.pretrained import stems
from mmrl.models.pretrained.report import ImportReport, check_fit
from mmrl.models.vit import VITS, vit

_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TIMM_MAP = {"norm1": ("norm1",), "norm2": ("norm2",), "attn.proj": ("attention", "out"),
             "mlp.fc1": ("mlp", "fc1"), "mlp.fc2": ("mlp", "fc2")}
_HF_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_MAP = {"layernorm_before": ("norm1",), "layernorm_after": ("norm2",),
           # transformers >= 5 in memory (ViTModel.state_dict()):
           "attention.q_proj": ("attention", "query"), "attention.k_proj": ("attention", "key"),
           "attention.v_proj": ("attention", "value"), "attention.o_proj": ("attention", "out"),
           "mlp.fc1": ("mlp", "fc1"), "mlp.fc2": ("mlp", "fc2"),
           # the Hub's model.safetensors files (and transformers < 5):
           "attention.attention.query": ("attention", "query"),
           "attention.attention.key": ("attention", "key"),
           "attention.attention.value": ("attention", "value"),
           "attention.output.dense": ("attention", "out"),
           "intermediate.dense": ("mlp", "fc1"), "output.dense": ("mlp", "fc2")}
_UNUSED = {"head": "classifier head (the tower has no head)",
           "head_dist": "DeiT distillation head", "fc_norm": "classifier-pooling norm",
           "pooler": "HF pooler (tanh dense over [CLS]; not part of the tower)",
           "dist_token": "DeiT distillation token (we keep the [CLS] token only)",
           "embeddings.mask_token": "HF masked-image-modelling token"}


def detect_layout(state_dict: Mapping[str, Any], prefix: str = "") -> tuple[str, str]:
  """('timm' | 'hf', prefix) of a ViT state dict; an HF 'vit.' wrapper prefix is added."""
  names = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
  if "patch_embed.proj.weight" in names:
    return "timm", prefix
  if "embeddings.patch_embeddings.projection.weight" in names:
    return "hf", prefix
  if "vit.embeddings.patch_embeddings.projection.weight" in names:
    return "hf", prefix + "vit."
  raise ValueError(
      f"no ViT patch embedding under prefix {prefix!r} (looked for 'patch_embed.proj.weight' "
      "(timm) and 'embeddings.patch_embeddings.projection.weight' (Hugging Face)); first names: "
      + ", ".join(list(state_dict)[:5]))


def expected_variables(model_name: str, in_channels: int, grid: tuple[int, int]) -> dict[str, Any]:
  """Shapes of our ViT's variables for `in_channels` inputs and a gh x gw patch grid."""
  model = vit(model_name, dtype=jnp.float32)
  p = VITS[model_name].patch
  x = jax.ShapeDtypeStruct((1, grid[0] * p, grid[1] * p, in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def resize_position_grid(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[1, gh, gw, D] -> [1, grid[0], grid[1], D], bicubic + antialias (timm's resampling)."""
  if tuple(pos.shape[1:3]) == tuple(grid):
    return pos
  out = jax.image.resize(jnp.asarray(pos, jnp.float32), (1, grid[0], grid[1], pos.shape[-1]),
                         method="bicubic", antialias=True)
  return np.asarray(out, np.float32)


def _canonical(state_dict: Mapping[str, Any], layout: str, prefix: str, report: ImportReport
               ) -> dict[str, tuple[str, np.ndarray]]:
  """Source tensors renamed to timm names: {timm name: (source name, array)}; the rest reported."""
  out: dict[str, tuple[str, np.ndarray]] = {}
  for full_name, value in state_dict.items():
    if not full_name.startswith(prefix):
      continue
    name = full_name[len(prefix):]
    head = name.split(".")[0] if not name.startswith("embeddings.mask") else "embeddings.mask_token"
    if head in _UNUSED:
      report.unused[full_name] = _UNUSED[head]
      continue
    if layout == "hf":
      renamed = {"embeddings.cls_token": "cls_token",
                 "embeddings.position_embeddings": "pos_embed",
                 "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                 "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                 "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}.get(name)
      m = _HF_LAYER.match(name)
      if m:
        module, _, leaf = m.group(2).rpartition(".")
        sub = _HF_MAP.get(module)
        renamed = None if sub is None else f"blocks.{m.group(1)}.hf.{'.'.join(sub)}.{leaf}"
      if renamed is None:
        report.unused[full_name] = "not part of an HF ViTModel encoder"
        continue
      name = renamed
    out[name] = (full_name, np.asarray(value, np.float32))
  return out


def vit_params_from_timm(
    state_dict: Mapping[str, np.ndarray], *, model_name: str, in_channels: int = 1,
    image_size: int | Sequence[int] = 224, prefix: str = "", layout: str = "auto",
    source_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    input_norm: tuple[float, float] | None = None, strict: bool = True, source: str = "",
) -> tuple[dict[str, Any], ImportReport]:
  """Our ViT `model_name`'s variables {'params'} from a timm or Hugging Face ViT state dict.

  Args:
    state_dict: tensor name -> array.
    model_name: 'vit_b16' (ViT-B/16, DeiT-B/16), 'vit_s16', 'vit_tiny' (resnet.VITS).
    in_channels: 1 = patch kernel summed over RGB (normalisation folded into its bias when
      source_norm and input_norm are given; exact); 3 = unchanged.
    image_size: our input size (int or (H, W)); the position grid is resized to it.
    prefix: read only names under it (removed); 'vit.' of an HF wrapper is detected.
    layout: 'timm' | 'hf' | 'auto' (detect_layout).
    source_norm / input_norm / strict / source: as in resnet_params_from_torchvision.
  """
  if model_name not in VITS:
    raise ValueError(f"model_name={model_name!r} is not one of our ViTs ({sorted(VITS)})")
  spec = VITS[model_name]
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if size[0] % spec.patch or size[1] % spec.patch:
    raise ValueError(f"image_size {size} is not a multiple of the patch size {spec.patch}")
  grid = (size[0] // spec.patch, size[1] // spec.patch)
  detected, prefix = detect_layout(state_dict, prefix)
  layout = detected if layout == "auto" else layout
  if layout != detected:
    raise ValueError(f"layout={layout!r} but the state dict is in the {detected!r} layout")
  report = ImportReport(source=source or f"{layout} ViT state dict")
  tensors = _canonical(state_dict, layout, prefix, report)
  converted: dict[tuple[str, ...], np.ndarray] = {}
  sources: dict[tuple[str, ...], str] = {}

  def put(path, src, value):
    converted[("params",) + path] = value
    sources[("params",) + path] = src

  n_prefix = 1 + ("dist_token" in {k[len(prefix):] for k in state_dict if k.startswith(prefix)})
  for name, (src, value) in tensors.items():
    module, _, leaf = name.rpartition(".")
    if name == "cls_token":
      continue  # with pos_embed below
    if name == "pos_embed":
      n = value.shape[1]
      has_cls_pos = int(math.isqrt(n)) ** 2 != n
      patches = value[:, n_prefix:] if has_cls_pos else value
      side = math.isqrt(patches.shape[1])
      if side * side != patches.shape[1]:
        report.mismatched["params/pos_embedding"] = (
            f"source {src} has {patches.shape[1]} patch positions, not a square grid")
        continue
      grid_pos = resize_position_grid(patches.reshape(1, side, side, -1), grid)
      if (side, side) != grid:
        report.notes.append(f"position embeddings resized {side}x{side} -> {grid[0]}x{grid[1]} "
                            "(bicubic, antialiased)")
      put(("pos_embedding",), src, grid_pos)
      cls = tensors.get("cls_token")
      if cls is not None:
        cls_value = cls[1] + (value[:, :1] if has_cls_pos else 0.0)
        put(("cls",), cls[0], cls_value)
        sources[("params", "cls")] = cls[0]
      continue
    if module == "patch_embed.proj":
      if leaf == "weight":
        value, offset, note = stems.stem_kernel(value, in_channels, what="patch embedding",
                                                source_norm=source_norm, input_norm=input_norm)
        if note:
          report.notes.append(note + (" (offset into its bias)" if input_norm else ""))
          bias_name = name.replace("weight", "bias")
          if bias_name in tensors and np.any(offset):
            b_src, b = tensors[bias_name]
            tensors[bias_name] = (b_src, b + offset)
            if ("params", "patch_embedding", "bias") in converted:
              converted[("params", "patch_embedding", "bias")] = b + offset
        put(("patch_embedding", "kernel"), src, np.transpose(value, (2, 3, 1, 0)))
      else:
        put(("patch_embedding", "bias"), src, value)
      continue
    if module == "norm":
      put(("final_norm", "scale" if leaf == "weight" else "bias"), src, value)
      continue
    m = _TIMM_BLOCK.match(module)
    if not m:
      report.unused[src] = "not part of a ViT encoder"
      continue
    block, rest = f"block_{int(m.group(1))}", m.group(2)
    if rest.startswith("hf."):
      sub = tuple(rest[3:].split("."))
    elif rest == "attn.qkv":
      d = value.shape[0] // 3
      for i, part in enumerate(("query", "key", "value")):
        chunk = value[i * d:(i + 1) * d]
        put((block, "attention", part, "kernel" if leaf == "weight" else "bias"), src,
            chunk.T if leaf == "weight" else chunk)
      continue
    else:
      sub = _TIMM_MAP.get(rest)
      if sub is None:
        report.unused[src] = ("layer scale / unknown block tensor (our blocks have none)"
                              if rest.startswith("ls") else "unknown block tensor")
        continue
    if sub[0].startswith("norm"):
      put((block,) + sub + ("scale" if leaf == "weight" else "bias",), src, value)
    else:
      put((block,) + sub + ("kernel" if leaf == "weight" else "bias",), src,
          value.T if leaf == "weight" else value)
  variables = check_fit(converted, sources, expected_variables(model_name, in_channels, grid),
                        report, what=f"{model_name} tower ({in_channels}-channel, grid "
                        f"{grid[0]}x{grid[1]})", strict=strict)
  return variables, report
