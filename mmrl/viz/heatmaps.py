"""Heat-map pictures of sentence alignment maps: overlays, captioned sentence sheets, PNG files.

- `overlay(image_hw, map_gh_gw)`: the map upsampled bilinearly to the image, min-max normalised,
  coloured with a jet-like colour map (written out here: blue -> cyan -> yellow -> red) and blended
  over the grey image -> uint8 [H,W,3].
- `sentence_sheet(image, maps, sentences, sentence_mask)`: one captioned panel per valid
  sentence (optionally the ground truth outlined in green) in a grid, under a colour key
  (low -> high, and the green outline when boxes are drawn) -> uint8 image.
- `write_heatmap_pngs(out_dir, images)`: writes {name: uint8 image} as PNGs; returns the paths.
Pure numpy + PIL; no JAX.
"""
from __future__ import annotations

import pathlib
import re
import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl.ops.resize import upsample_bilinear

ALPHA = 0.45          # weight of the colour map in the blend
MIN_PANEL = 192       # panels are upscaled (nearest, integer factor) to at least this size
CAPTION_CHARS = 30    # characters per caption line
CAPTION_LINES = 4
LEGEND_H = 58         # the colour-key band above a sentence sheet


def jet(x: np.ndarray) -> np.ndarray:
  """f[...] in [0, 1] -> f64[..., 3] RGB in [0, 1] (the classic 'jet' ramps)."""
  x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)[..., None]
  centres = np.array([3.0, 2.0, 1.0])  # r, g, b peaks at 3/4, 1/2, 1/4
  return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def _normalise(m: np.ndarray) -> np.ndarray:
  lo, hi = float(m.min()), float(m.max())
  return (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)


def overlay(image_hw: np.ndarray, map_gh_gw: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
  """uint8 [H,W,3]: the map (bilinear to H x W, min-max normalised, jet) over the image.

  Args:
    image_hw: f[H,W] display image in [0, 1] (bright = dense), or uint8.
    map_gh_gw: f[gh,gw] alignment map.
    alpha: blend weight of the colours.
  """
  img = np.asarray(image_hw, np.float64)
  if img.ndim == 3:
    img = img[..., 0]
  if np.asarray(image_hw).dtype == np.uint8:
    img = img / 255.0
  h, w = img.shape
  colours = jet(_normalise(upsample_bilinear(map_gh_gw, h, w)))
  out = (1 - alpha) * np.clip(img, 0, 1)[..., None] + alpha * colours
  return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
  m = np.asarray(mask, bool)
  inner = m.copy()
  inner[1:] &= m[:-1]
  inner[:-1] &= m[1:]
  inner[:, 1:] &= m[:, :-1]
  inner[:, :-1] &= m[:, 1:]
  return m & ~inner


def _panel(image: np.ndarray, m: np.ndarray, caption: str, gt: Optional[np.ndarray]
           ) -> np.ndarray:
  rgb = overlay(image, m)
  if gt is not None:
    rgb[_outline(gt)] = (0, 255, 0)
  k = max(1, -(-MIN_PANEL // rgb.shape[0]))
  rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
  h, w = rgb.shape[:2]
  font = ImageFont.load_default()
  lines = textwrap.wrap(caption, CAPTION_CHARS)[:CAPTION_LINES] or [""]
  pad = 12 * CAPTION_LINES + 6
  canvas = Image.new("RGB", (w, h + pad), (255, 255, 255))
  canvas.paste(Image.fromarray(rgb), (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    draw.text((3, h + 3 + 12 * i), line, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def sentence_sheet(image: np.ndarray, maps: np.ndarray, sentences: Sequence[str],
                   sentence_mask: np.ndarray, *, boxes: Optional[Sequence[np.ndarray]] = None,
                   columns: int = 4) -> np.ndarray:
  """uint8 grid of captioned overlays, one per sentence s with sentence_mask[s].

  Args:
    image: f[H,W] (or [H,W,1]) display image in [0, 1].
    maps: f[S,gh,gw] the sentences' maps.
    sentences: S captions.
    sentence_mask: bool[S]; False panels are left out.
    boxes: optional S ground-truth masks bool[H,W], outlined in green.
    columns: panels per row.
  """
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., 0]
  keep = [s for s in range(len(sentences)) if bool(np.asarray(sentence_mask)[s])]
  if not keep:
    raise ValueError("sentence_sheet needs at least one sentence with sentence_mask True")
  panels = [_panel(image, np.asarray(maps)[s], sentences[s],
                   None if boxes is None else boxes[s]) for s in keep]
  ph, pw = panels[0].shape[:2]
  cols = min(columns, len(panels))
  rows = -(-len(panels) // cols)
  sheet = np.full((rows * ph + (rows - 1) * 4, cols * pw + (cols - 1) * 4, 3), 255, np.uint8)
  for i, p in enumerate(panels):
    r, c = divmod(i, cols)
    sheet[r * (ph + 4):r * (ph + 4) + ph, c * (pw + 4):c * (pw + 4) + pw] = p
  return np.concatenate([_legend_band(sheet.shape[1], boxes is not None), sheet], axis=0)


def _legend_band(width: int, with_boxes: bool) -> np.ndarray:
  """uint8 [LEGEND_H, width, 3]: the colour key of the panels (fits a one-panel sheet)."""
  canvas = Image.new("RGB", (width, LEGEND_H), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  try:
    font = ImageFont.load_default(size=11)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    font = ImageFont.load_default()
  bar_w = min(width - 70, 140)
  ramp = (jet(np.linspace(0, 1, bar_w)) * 255).round().astype(np.uint8)
  canvas.paste(Image.fromarray(np.repeat(ramp[None], 8, axis=0)), (30, 6))
  draw.text((3, 3), "low", fill=(0, 0, 0), font=font)
  draw.text((34 + bar_w, 3), "high", fill=(0, 0, 0), font=font)
  lines = ["each panel: one sentence's map", "(min-max scaled per panel)"]
  if with_boxes:
    lines.append("green outline: ground truth")
  for i, line in enumerate(lines):
    draw.text((3, 17 + 13 * i), line, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def _file_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "heatmap"


def write_heatmap_pngs(out_dir: str | pathlib.Path, images: Mapping[str, np.ndarray]
                       ) -> list[pathlib.Path]:
  """Writes each uint8 [H,W,3] image as `<out_dir>/<name>.png` ('/' -> '_'); returns the paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, img in images.items():
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f"heat map {name!r} must be uint8 [H,W,3]; got {arr.dtype} {arr.shape}")
    path = out / f"{_file_name(name)}.png"
    Image.fromarray(arr).save(path)
    paths.append(path)
  return paths


__all__ = ["overlay", "sentence_sheet", "write_heatmap_pngs", "jet"]
