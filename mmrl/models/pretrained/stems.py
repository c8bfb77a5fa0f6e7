"""One-channel stems from RGB kernels, with the checkpoint's input normalisation folded in.

An RGB checkpoint expects x_c = (g - m_c) / s_c for a grey image g in [0, 1] replicated to three
channels (m, s: the checkpoint's per-channel mean / std, e.g. ImageNet's). Our pipeline feeds one
channel g' = (g - m') / s' (config.data.mean / data.std). Since g = s' g' + m',

  sum_c W_c * x_c = sum_c (W_c s' / s_c) * g' + sum_c W_c (m' - m_c) / s_c
                  = W' * g'                   + offset

so the 1-channel kernel is W' = sum_c W_c s' / s_c and the constant `offset` (per output channel:
the sum over channels and taps) goes where the architecture has a bias: the ViT patch embedding's
bias (exact: VALID padding), or the ResNet stem's BatchNorm running mean (mean - offset; exact
wherever the 7x7 window lies inside the image; in the ring of stem outputs whose window reaches
into the 3-pixel zero padding, torch's zero pad means grey level m_c per channel and ours means
m', so those outputs differ by the padded taps' share of the offset: tests/test_pretrained_parity.py
measures both). Without a normalisation (input_norm=None) the conversion is the plain sum of the
RGB kernels, which is exact for an image replicated to three channels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # timm's augreg ViTs and google/vit-* use mean = std = 0.5


def one_channel_kernel(weight_oihw: np.ndarray, *, source_norm: tuple[Sequence[float],
                                                                      Sequence[float]] | None = None,
                       input_norm: tuple[float, float] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(W' f32[O, 1, kh, kw], offset f32[O]) for an RGB conv weight [O, C, kh, kw] (docstring).

  source_norm = (mean[C], std[C]) the checkpoint expects; input_norm = (mean, std) of our 1-channel
  input. Give both to fold the normalisation, neither for the plain sum (offset 0).
  """
  w = np.asarray(weight_oihw, np.float64)
  if (source_norm is None) != (input_norm is None):
    raise ValueError("give both source_norm and input_norm to fold a normalisation, or neither")
  if input_norm is None:
    return w.sum(axis=1, keepdims=True).astype(np.float32), np.zeros(w.shape[0], np.float32)
  mean_c = np.asarray(source_norm[0], np.float64)
  std_c = np.asarray(source_norm[1], np.float64)
  if mean_c.shape != (w.shape[1],) or std_c.shape != (w.shape[1],):
    raise ValueError(f"source_norm needs {w.shape[1]} means and stds (one per input channel of "
                     f"the checkpoint); got {source_norm}")
  m_in, s_in = float(input_norm[0]), float(input_norm[1])
  if s_in <= 0 or np.any(std_c <= 0):
    raise ValueError(f"normalisation std must be > 0; got input {s_in}, source {std_c}")
  per_channel = (1, -1) + (1,) * (w.ndim - 2)
  kernel = (w * (s_in / std_c).reshape(per_channel)).sum(axis=1, keepdims=True)
  offset = (w * ((m_in - mean_c) / std_c).reshape(per_channel)).reshape(w.shape[0], -1).sum(1)
  return kernel.astype(np.float32), offset.astype(np.float32)


def stem_kernel(weight_oihw: np.ndarray, in_channels: int, *, what: str,
                source_norm: tuple[Sequence[float], Sequence[float]] | None = None,
                input_norm: tuple[float, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
  """The first conv of an imported tower for `in_channels` inputs: (weight, offset, note).

  The checkpoint's own channel count keeps the weight (offset and note None; `input_norm` is
  then an error: normalise the input per channel instead); 1 sums the RGB kernels with the
  normalisation folded in (`one_channel_kernel`), and `note` says so for the import report
  (`what` names the layer, e.g. 'stem'). Any other count is an error.
  """
  if in_channels == weight_oihw.shape[1]:
    if input_norm is not None:
      raise ValueError("input_norm folds a normalisation into a 1-channel stem; with "
                       f"in_channels={in_channels} normalise the input per channel instead")
    return weight_oihw, None, None
  if in_channels != 1:
    raise ValueError(f"in_channels={in_channels}: only 1 (summed RGB kernels) or the "
                     f"checkpoint's own {weight_oihw.shape[1]} are supported")
  kernel, offset = one_channel_kernel(weight_oihw, source_norm=source_norm,
                                      input_norm=input_norm)
  note = f"{what}: 1-channel kernel = sum of the RGB kernels" + (
      f", normalisation {source_norm} folded for input (g - {input_norm[0]}) / {input_norm[1]}"
      if input_norm else "")
  return kernel, offset, note

