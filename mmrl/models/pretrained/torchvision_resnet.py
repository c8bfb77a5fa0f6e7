"""torchvision ResNet state dicts (IMAGENET1K_V1 / V2 layout) -> our ResNet variables.

Name mapping (torchvision -> ours; conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]):
  conv1.weight                         params/stem_conv/kernel
  bn1.{weight,bias}                    params/stem_norm/{scale,bias}
  bn1.{running_mean,running_var}       batch_stats/stem_norm/{mean,var}
  layer{s}.{b}.conv{k}.weight          params/stage{s}_block{b}/conv{k}/kernel
  layer{s}.{b}.bn{k}.*                 .../stage{s}_block{b}/norm{k}/...
  layer{s}.{b}.downsample.0.weight     params/stage{s}_block{b}/proj_conv/kernel
  layer{s}.{b}.downsample.1.*          .../stage{s}_block{b}/proj_norm/...
Unused: fc.* (the ImageNet classifier; we have no head) and *.num_batches_tracked (a counter).
Architecture notes: both are v1.5 (stride on the bottleneck's 3x3), pad k // 2, BatchNorm eps
1e-5; the BN momentum only matters in training (torch 0.1 = flax 0.9), and torch updates
running_var with the unbiased batch variance where flax uses the biased one (training only).
Only config.model.image.norm='batch' can take these weights (GroupNorm has no running stats).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.models.pretrained import stems
from mmrl.models.pretrained.report import ImportReport, check_fit
from mmrl.models.resnet import RESNETS, resnet

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)$")
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def expected_variables(model_name: str, in_channels: int) -> dict[str, Any]:
  """Shapes (jax.ShapeDtypeStruct tree) of our ResNet's variables for `in_channels` inputs."""
  model = resnet(model_name, norm="batch", dtype=jnp.float32)
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _our_module(name: str) -> tuple[str, ...] | None:
  if name in ("conv1", "bn1"):
    return ("stem_conv",) if name == "conv1" else ("stem_norm",)
  m = _BLOCK.match(name + ".x")
  if not m:
    return None
  block = f"stage{int(m.group(1))}_block{int(m.group(2))}"
  part = m.group(3)
  sub = {"downsample.0": "proj_conv", "downsample.1": "proj_norm"}.get(part)
  if sub is None:
    sub = part.replace("bn", "norm")
  return (block, sub)


def resnet_params_from_torchvision(
    state_dict: Mapping[str, np.ndarray], *, model_name: str, in_channels: int = 1,
    prefix: str = "", source_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    input_norm: tuple[float, float] | None = None, strict: bool = True, source: str = "",
) -> tuple[dict[str, Any], ImportReport]:
  """Our ResNet `model_name`'s variables {'params', 'batch_stats'} from a torchvision state dict.

  Args:
    state_dict: tensor name -> array (numpy or anything np.asarray takes).
    model_name: 'resnet18' | 'resnet50' (any name in resnet.RESNETS with that layout).
    in_channels: 1 = the stem kernel is the sum of the RGB kernels (stems.py), with the
      normalisation folded in when source_norm and input_norm are given; 3 = unchanged.
    prefix: only names starting with it are read, with it removed (e.g. 'img_encoder.model.' for
      a ResNet inside a bigger checkpoint); other names are not reported.
    source_norm: (mean[3], std[3]) the checkpoint expects (stems.IMAGENET_MEAN/STD).
    input_norm: (mean, std) of our 1-channel input (config.data.mean / data.std).
    strict: raise WeightsMismatchError when a parameter is missing or mis-shaped (default).
    source: a label for messages (the file name).
  Returns:
    (variables as nested dicts of float32 numpy arrays, ImportReport).
  """
  if model_name not in RESNETS:
    raise ValueError(f"model_name={model_name!r} is not one of our ResNets ({sorted(RESNETS)})")
  report = ImportReport(source=source or "torchvision state dict")
  converted: dict[tuple[str, ...], np.ndarray] = {}
  sources: dict[tuple[str, ...], str] = {}
  stem_offset = None
  for full_name, value in state_dict.items():
    if not full_name.startswith(prefix):
      continue
    name = full_name[len(prefix):]
    module, _, leaf = name.rpartition(".")
    if leaf == "num_batches_tracked":
      report.unused[full_name] = "BatchNorm step counter (not used at inference)"
      continue
    if module == "fc":
      report.unused[full_name] = "ImageNet classifier head (the tower has no head)"
      continue
    ours = _our_module(module)
    if ours is None:
      report.unused[full_name] = "not part of a torchvision ResNet"
      continue
    value = np.asarray(value, np.float32)
    if "conv" in ours[-1]:
      if leaf != "weight":
        report.unused[full_name] = "torchvision ResNet convs have no bias"
        continue
      if ours == ("stem_conv",):
        value, stem_offset, note = stems.stem_kernel(value, in_channels, what="stem",
                                                     source_norm=source_norm,
                                                     input_norm=input_norm)
        if note:
          report.notes.append(note)
      path = ("params",) + ours + ("kernel",)
      converted[path] = np.transpose(value, (2, 3, 1, 0))
    else:
      if leaf not in _BN_LEAVES:
        report.unused[full_name] = f"unknown BatchNorm tensor {leaf!r}"
        continue
      collection, ours_leaf = _BN_LEAVES[leaf]
      path = (collection,) + ours + (ours_leaf,)
      converted[path] = value
    sources[path] = full_name
  if stem_offset is not None and np.any(stem_offset):
    key = ("batch_stats", "stem_norm", "mean")
    if key in converted:
      converted[key] = converted[key] - stem_offset
  variables = check_fit(converted, sources, expected_variables(model_name, in_channels), report,
                        what=f"{model_name} tower ({in_channels}-channel stem)", strict=strict)
  return variables, report
