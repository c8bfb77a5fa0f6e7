"""Evaluation pictures as uint8 [H, W, 3] arrays (for TensorBoard and PNG files), each readable
alone: a legend band on top says what the rows, columns and colours are.

- `to_rgb`: a normalised grey image [H, W(, 1)] -> uint8 RGB (min-max per image).
- `retrieval_sheet`: one row per query report: its text (wrapped), the report's own image (grey
  frame), then the top-k retrieved images under their rank, framed green when the retrieved image
  belongs to the query's study (a hit) and red otherwise.
- `segmentation_sheet`: one row per example: image | ground truth (green) | prediction (red),
  with each row's Dice when given.
Small images are enlarged (nearest neighbour, integer factor) so the captions stay legible.
"""
from __future__ import annotations

import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (40, 200, 60)
RED = (220, 50, 40)
GREY = (128, 128, 128)
INK = (0, 0, 0)
WHITE = (255, 255, 255)

FONT_SIZE = 12
LINE = 15                 # pixels per text line
MIN_CELL = 96             # images are enlarged to at least this many pixels per side
QUERY_CHARS = 34          # characters per line of a query's text
FRAME = 3                 # frame width of a retrieved image


def _font():
  try:
    return ImageFont.load_default(size=FONT_SIZE)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def to_rgb(image: np.ndarray) -> np.ndarray:
  x = np.asarray(image, np.float32)
  if x.ndim == 3:
    x = x[..., 0]
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  return np.repeat((x * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _factor(h: int, w: int) -> int:
  return max(1, -(-MIN_CELL // max(1, min(h, w))))


def _framed(rgb: np.ndarray, colour: tuple[int, int, int], width: int = FRAME) -> np.ndarray:
  out = rgb.copy()
  out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
  return out


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
  out = rgb.astype(np.float32)
  m = np.asarray(mask, bool)
  out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
  return out.round().astype(np.uint8)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, lines: Sequence[tuple], font) -> None:
  """Draws legend lines at (x, y); a line is (text,) or (colour swatch, text)."""
  for i, line in enumerate(lines):
    yy = y + i * LINE
    if len(line) == 2:
      colour, text = line
      draw.rectangle([x, yy + 2, x + 10, yy + 12], fill=colour, outline=INK)
      draw.text((x + 16, yy), text, fill=INK, font=font)
    else:
      draw.text((x, yy), line[0], fill=INK, font=font)


def _legend_width(lines: Sequence[tuple], font) -> int:
  return int(max(font.getlength(line[-1]) + (16 if len(line) == 2 else 0) for line in lines)) + 12


def hit_colours(top: np.ndarray, groups: Optional[np.ndarray] = None) -> np.ndarray:
  """bool [Q, k]: True where retrieved image top[q, j] belongs to query q's study (query q is
  pair q; without `groups` only image q itself is a hit)."""
  top = np.asarray(top)
  rows = np.arange(top.shape[0])[:, None]
  if groups is None:
    return top == rows
  g = np.asarray(groups).reshape(-1)
  return g[top] == g[rows]


def retrieval_sheet(images: np.ndarray, top: np.ndarray, *,
                    queries: Optional[Sequence[str]] = None,
                    groups: Optional[np.ndarray] = None, gap: int = 6) -> np.ndarray:
  """Text->image retrieval, one row per query report (module docstring).

  Args:
    images: [N, H, W, 1] the evaluation images (pair i's image is images[i]).
    top: int [Q, k]: for query report q (its pair is row q), the indices of the top-k images,
      best first.
    queries: the Q query texts (None: the text column says 'report of pair q' only).
    groups: int [N] the study of each pair; a retrieved image of the query's study is a hit.
    gap: pixels between cells.
  """
  images = np.asarray(images)
  top = np.asarray(top)
  q, k = top.shape
  f, h, w, top_h, x0 = _retrieval_layout(images.shape[1:3], gap)
  font = _font()
  hits = hit_colours(top, groups)
  max_lines = max(1, (h - LINE) // LINE)
  legend = [
      (f"Text -> image retrieval: one row per query report ({q} queries, top {k} of "
       f"{len(images)} images).",),
      ("Columns: the query's text | the report's own image | the images ranked 1..k for it.",),
      (GREEN, "green frame: an image of the query's study (a hit)"),
      (RED, "red frame: an image of another study (a miss)"),
      (GREY, "grey frame: the query report's own image (for reference)"),
  ]
  assert len(legend) == _RETRIEVAL_LEGEND_LINES
  width = max(x0 + (k + 1) * (w + gap) + gap, _legend_width(legend, font))
  height = top_h + q * (h + gap) + gap
  canvas = Image.new("RGB", (width, height), WHITE)
  draw = ImageDraw.Draw(canvas)
  _legend(draw, gap, gap, legend, font)
  header_y = top_h - LINE
  draw.text((gap, header_y), "query report", fill=INK, font=font)
  draw.text((x0, header_y), "own image", fill=INK, font=font)
  for j in range(k):
    draw.text((x0 + (j + 1) * (w + gap) + gap, header_y), f"rank {j + 1}", fill=INK, font=font)
  for r in range(q):
    y = top_h + r * (h + gap)
    hit = (f"first hit: rank {int(np.argmax(hits[r])) + 1}" if hits[r].any()
           else f"no hit in the top {k}")
    caption = queries[r] if queries is not None else ""
    lines = textwrap.wrap(caption, QUERY_CHARS) or [""]
    if len(lines) > max_lines:
      lines = lines[:max_lines]
      lines[-1] = lines[-1][:QUERY_CHARS - 3] + "..."
    draw.text((gap, y), f"query {r + 1} (pair {r}): {hit}", fill=INK, font=font)
    for i, line in enumerate(lines):
      draw.text((gap, y + (i + 1) * LINE), line, fill=(60, 60, 60), font=font)
    canvas.paste(Image.fromarray(_framed(_enlarge(to_rgb(images[r]), f), GREY)), (x0, y))
    for j in range(k):
      colour = GREEN if hits[r, j] else RED
      cell = _framed(_enlarge(to_rgb(images[top[r, j]]), f), colour)
      canvas.paste(Image.fromarray(cell), (x0 + (j + 1) * (w + gap) + gap, y))
  return np.asarray(canvas)


_RETRIEVAL_LEGEND_LINES = 5


def _retrieval_layout(images_hw: Sequence[int], gap: int) -> tuple[int, int, int, int, int]:
  """(enlargement, cell height, cell width, y of the first row, x of the image columns)."""
  f = _factor(*images_hw)
  top_h = gap + _RETRIEVAL_LEGEND_LINES * LINE + gap + LINE  # legend, then column headers
  return f, images_hw[0] * f, images_hw[1] * f, top_h, gap + 7 * QUERY_CHARS + 2 * gap


def retrieval_cell_origin(images_hw: Sequence[int], row: int, column: int, *,
                          gap: int = 6) -> tuple[int, int]:
  """(y, x) of the top-left pixel of a `retrieval_sheet` cell: column 0 = the report's own
  image, column j >= 1 = rank j (for tests and for cropping)."""
  _, h, w, top_h, x0 = _retrieval_layout(images_hw, gap)
  return top_h + row * (h + gap), x0 + column * (w + gap) + (gap if column else 0)


def segmentation_sheet(images: np.ndarray, target: np.ndarray, pred: np.ndarray, *,
                       dice: Optional[Sequence[float]] = None, title: str = "",
                       gap: int = 6) -> np.ndarray:
  """Rows: image | ground truth (green) | prediction (red), under a legend (module docstring).

  Args:
    images: [N, H, W(, 1)] the test images.
    target, pred: bool [N, H, W] ground-truth and predicted masks.
    dice: optional N per-row Dice scores, written under the prediction column's header.
    title: optional first legend line (e.g. the target and the head).
  """
  target = np.asarray(target, bool)
  n, h0, w0 = target.shape
  f = _factor(h0, w0)
  h, w = h0 * f, w0 * f
  font = _font()
  legend = [(title or f"Segmentation: {n} test images, one per row.",),
            ("Columns: image | ground-truth mask | predicted mask (probability >= 0.5).",),
            (GREEN, "green tint: ground-truth mask"),
            (RED, "red tint: predicted mask" + ("; the row's Dice is at the left" if dice
                                                 is not None else ""))]
  top_h = gap + len(legend) * LINE + gap + LINE
  label_w = 7 * 12 if dice is not None else 0
  width = max(label_w + 3 * (w + gap) + gap, _legend_width(legend, font))
  canvas = Image.new("RGB", (width, top_h + n * (h + gap) + gap), WHITE)
  draw = ImageDraw.Draw(canvas)
  _legend(draw, gap, gap, legend, font)
  for j, name in enumerate(("image", "ground truth", "prediction")):
    draw.text((label_w + gap + j * (w + gap), top_h - LINE), name, fill=INK, font=font)
  for r in range(n):
    y = top_h + r * (h + gap)
    rgb = _enlarge(to_rgb(images[r]), f)
    t, p = _enlarge(target[r], f), _enlarge(np.asarray(pred[r], bool), f)
    for j, panel in enumerate((rgb, _overlay(rgb, t, GREEN), _overlay(rgb, p, RED))):
      canvas.paste(Image.fromarray(panel), (label_w + gap + j * (w + gap), y))
    if dice is not None:
      draw.text((gap, y), f"Dice\n{float(dice[r]):.2f}", fill=INK, font=font)
    if not p.any():
      draw.text((label_w + gap + 2 * (w + gap) + 3, y + 2), "(nothing predicted)", fill=RED,
                font=font)
  return np.asarray(canvas)


__all__ = ["to_rgb", "retrieval_sheet", "retrieval_cell_origin", "hit_colours",
           "segmentation_sheet"]
