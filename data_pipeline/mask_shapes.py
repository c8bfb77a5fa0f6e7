"""Polygons in source pixels -> a binary mask (Object-CXR's rectangles, ellipses and polygons).

Owns rasterising annotation shapes the way BenchX draws Object-CXR masks (OpenCV
`rectangle(..., FILLED)` / `fillPoly`): a polygon's interior **and its boundary pixels** are set,
so an axis-aligned rectangle x1 y1 x2 y2 covers columns x1..x2 and rows y1..y2 inclusive. A shape
is a flat tuple `(x1, y1, x2, y2, ...)` of >= 3 vertices; several shapes are OR-ed. Vertices
outside the image are clipped by the drawing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def rectangle(x1: float, y1: float, x2: float, y2: float) -> tuple[float, ...]:
  """The 4-vertex polygon of an axis-aligned box."""
  return (x1, y1, x2, y1, x2, y2, x1, y2)


def rasterise(shapes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
  """OR of the filled polygons (module docstring) -> bool [height, width]."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for shape in shapes:
    if len(shape) < 6 or len(shape) % 2:
      raise ValueError(f"shape {tuple(shape)} is not >= 3 (x, y) vertices")
    points = [(float(shape[i]), float(shape[i + 1])) for i in range(0, len(shape), 2)]
    draw.polygon(points, fill=1, outline=1)
  return np.asarray(canvas, dtype=np.uint8) > 0
