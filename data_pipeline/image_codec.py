"""Image sanity checks, short-side resizing, grey PNG encode/decode and reading a Pillow image file.

Owns the pixel format of records: single-channel 8- or 16-bit PNG made from a float image in
[0, 1]. `read_pillow_image` reads PNG/JPEG/TIFF... (8/16-bit, RGB/RGBA converted to grey) as
float32 [H, W] in [0, 1]. Uses Pillow only; the loader of any source image (DICOM included) is
data_pipeline.image_io, above this module and data_pipeline.dicom_decode.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from data_pipeline import errors


def check_image(image: np.ndarray, item_id: str) -> None:
  """Raises BadImageError if `image` is zero-size, not 2-D, non-finite or constant."""
  image = np.asarray(image)
  if image.size == 0 or 0 in image.shape:
    raise errors.BadImageError(item_id, f"image is empty (shape {image.shape})")
  if image.ndim != 2:
    raise errors.BadImageError(item_id, f"image must be 2-D [H, W], got shape {image.shape}")
  if image.dtype.kind == "f":
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
      raise errors.BadImageError(item_id, f"{bad} of {image.size} pixels are NaN or infinite")
  lo, hi = image.min(), image.max()
  if lo == hi:
    raise errors.BadImageError(item_id, f"image is constant (every pixel = {lo}); nothing to "
                               "learn from")


def resize_short_side(image: np.ndarray, short_side: int, *,
                      allow_upsample: bool = False) -> np.ndarray:
  """Resizes so that min(H, W) == short_side, keeping the aspect ratio (antialiased Lanczos).

  Returns the float32 image unchanged if its short side already equals `short_side`, or if it is
  smaller and `allow_upsample` is False.
  """
  if short_side <= 0:
    raise ValueError(f"short_side must be positive, got {short_side}")
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 2:
    raise ValueError(f"resize_short_side expects [H, W], got shape {image.shape}")
  h, w = image.shape
  short = min(h, w)
  if short == short_side or (short < short_side and not allow_upsample):
    return image
  scale = short_side / short
  if h <= w:
    new_h, new_w = short_side, max(1, int(round(w * scale)))
  else:
    new_h, new_w = max(1, int(round(h * scale))), short_side
  pil = Image.fromarray(np.ascontiguousarray(image), mode="F")
  out = pil.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
  return np.asarray(out, dtype=np.float32)


def encode_png(image01: np.ndarray, bit_depth: int = 8) -> bytes:
  """Float [H, W] in [0, 1] (clipped) -> single-channel 8- or 16-bit PNG bytes."""
  if bit_depth not in (8, 16):
    raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
  image = np.asarray(image01, dtype=np.float32)
  if image.ndim != 2:
    raise ValueError(f"encode_png expects [H, W], got shape {image.shape}")
  top = (1 << bit_depth) - 1
  q = np.rint(np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * top)
  if bit_depth == 8:
    pil = Image.fromarray(q.astype(np.uint8), mode="L")
  else:
    pil = Image.frombytes("I;16", (image.shape[1], image.shape[0]), q.astype("<u2").tobytes())
  buf = io.BytesIO()
  pil.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """PNG bytes -> uint8 or uint16 [H, W] (colour converted to grey)."""
  with Image.open(io.BytesIO(data)) as pil:
    return _pil_to_integer_grey(pil)


def read_pillow_image(path: str | os.PathLike, item_id: str) -> np.ndarray:
  """A Pillow-readable image file (PNG, JPEG, TIFF...; 8/16-bit; RGB/RGBA -> grey) -> float32
  [H, W] in [0, 1].

  Raises:
    errors.BadImageError: unreadable image file, or zero-size/constant/non-finite image.
  """
  try:
    with Image.open(path) as pil:
      grey = _pil_to_integer_grey(pil)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise errors.BadImageError(item_id, f"cannot read image file: {type(e).__name__}: {e}") from e
  top = 65535.0 if grey.dtype == np.uint16 else 255.0
  image = grey.astype(np.float32) / np.float32(top)
  check_image(image, item_id)
  return image


def _pil_to_integer_grey(pil: Image.Image) -> np.ndarray:
  """Pillow image -> uint8 (8-bit sources) or uint16 (16-bit / 32-bit int sources) [H, W]."""
  mode = pil.mode
  if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
    return np.asarray(pil).astype(np.uint16)  # astype also fixes big-endian I;16B
  if mode == "I":  # 32-bit int, e.g. some 16-bit PNGs opened as I
    arr = np.asarray(pil, dtype=np.int64)
    return np.clip(arr, 0, 65535).astype(np.uint16)
  if mode == "F":
    arr = np.asarray(pil, dtype=np.float64)
    top = arr.max() if arr.max() > 1.0 else 1.0
    return np.rint(np.clip(arr / top, 0.0, 1.0) * 65535).astype(np.uint16)
  if mode == "L":
    return np.asarray(pil, dtype=np.uint8).copy()
  if mode in ("LA", "La"):
    return np.asarray(pil.getchannel(0), dtype=np.uint8).copy()
  if mode == "1":
    return np.asarray(pil.convert("L"), dtype=np.uint8).copy()
  # RGB, RGBA, P, CMYK, YCbCr, ...: ITU-R 601 luma via Pillow.
  return np.asarray(pil.convert("RGB").convert("L"), dtype=np.uint8).copy()
