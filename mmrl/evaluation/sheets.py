"""Evaluation pictures as uint8 [H, W, 3] arrays (for TensorBoard and PNG files).

- `to_rgb`: a normalised grey image [H, W(, 1)] -> uint8 RGB (min-max per image).
- `retrieval_sheet`: one row per query (report): its own image, then the top-k retrieved
  images, framed green when the retrieved image is the query's pair and red otherwise.
- `segmentation_sheet`: one row per example: image, ground-truth overlay, prediction overlay.
"""
from __future__ import annotations

import numpy as np

GREEN = (40, 200, 60)
RED = (220, 50, 40)
GREY = (128, 128, 128)


def to_rgb(image: np.ndarray) -> np.ndarray:
  x = np.asarray(image, np.float32)
  if x.ndim == 3:
    x = x[..., 0]
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  return np.repeat((x * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _framed(rgb: np.ndarray, colour: tuple[int, int, int], width: int = 2) -> np.ndarray:
  out = rgb.copy()
  out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
  return out


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
  out = rgb.astype(np.float32)
  m = np.asarray(mask, bool)
  out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
  return out.round().astype(np.uint8)


def retrieval_sheet(images: np.ndarray, top: np.ndarray, gap: int = 4) -> np.ndarray:
  """Rows: query pair's image (grey frame) then its top-k retrieved images.

  Args:
    images: [N, H, W, 1] the evaluation images (pair i's image is images[i]).
    top: int [Q, k]: for query report q (its pair is row q), the indices of the top-k images.
  """
  h, w = images.shape[1:3]
  q, k = top.shape
  sheet = np.full((q * (h + gap) + gap, (k + 1) * (w + gap) + 2 * gap, 3), 255, np.uint8)
  for r in range(q):
    y = gap + r * (h + gap)
    sheet[y:y + h, gap:gap + w] = _framed(to_rgb(images[r]), GREY)
    for j in range(k):
      x = 3 * gap + (j + 1) * (w + gap) - gap
      colour = GREEN if top[r, j] == r else RED
      sheet[y:y + h, x:x + w] = _framed(to_rgb(images[top[r, j]]), colour)
  return sheet


def segmentation_sheet(images: np.ndarray, target: np.ndarray, pred: np.ndarray,
                       gap: int = 4) -> np.ndarray:
  """Rows: image | ground truth (green) | prediction (red)."""
  n, h, w = target.shape
  sheet = np.full((n * (h + gap) + gap, 3 * (w + gap) + gap, 3), 255, np.uint8)
  for r in range(n):
    y = gap + r * (h + gap)
    rgb = to_rgb(images[r])
    for j, panel in enumerate((rgb, _overlay(rgb, target[r], GREEN), _overlay(rgb, pred[r], RED))):
      x = gap + j * (w + gap)
      sheet[y:y + h, x:x + w] = panel
  return sheet


__all__ = ["to_rgb", "retrieval_sheet", "segmentation_sheet"]
