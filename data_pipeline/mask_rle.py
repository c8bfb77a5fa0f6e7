"""SIIM-ACR run-length encoded masks (`train-rle.csv`, `EncodedPixels`) -> binary numpy masks.

Owns the SIIM format, as the competition's `mask_functions.py` defines it and LoVT / GLoRIA read
it: a string of integer pairs `offset length offset length ...` where each **offset is relative to
the end of the previous run** (the first to pixel 0), runs index the image **column-major**
(Fortran order: down the first column, then the next), and `-1` (or an empty cell) means "no
pneumothorax" (an all-zero mask). Several rows of one image are OR-ed (LoVT's `create_mask`).

A string that is not pairs of non-negative integers, or whose runs end past the image
(`offset + length > height * width`), is a `MaskError` (kind `bad_mask`) naming the image: the
converter logs it in errors.jsonl and skips that image.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from data_pipeline import errors

EMPTY = "-1"


class MaskError(errors.InputError):
  """An RLE mask string that cannot be decoded for its image (malformed or longer than it)."""
  kind = "bad_mask"


def is_empty(rle: str) -> bool:
  """True for the SIIM 'no mask' markers: '-1' or an empty cell."""
  return str(rle).strip() in ("", EMPTY)


def decode_siim_rle(rle: str, height: int, width: int, *, item: str = "") -> np.ndarray:
  """One SIIM RLE string -> bool [height, width] (module docstring for the format)."""
  flat = np.zeros(height * width, dtype=bool)
  if is_empty(rle):
    return flat.reshape(width, height).T
  try:
    values = [int(v) for v in str(rle).split()]
  except ValueError as e:
    raise MaskError(item, f"RLE string is not integers ({e}); expected 'offset length ...' "
                    "pairs or -1") from None
  if len(values) % 2 or any(v < 0 for v in values):
    raise MaskError(item, f"RLE string has {len(values)} values"
                    f"{' (odd count)' if len(values) % 2 else ''}"
                    f"{' with a negative value' if any(v < 0 for v in values) else ''}; "
                    "expected non-negative 'offset length' pairs or -1")
  position = 0
  for offset, length in zip(values[0::2], values[1::2]):
    position += offset
    if position + length > flat.size:
      raise MaskError(item, f"RLE run [{position}, {position + length}) ends past the "
                      f"{height}x{width} image ({flat.size} pixels): the mask belongs to "
                      "another image size or the string is corrupt")
    flat[position:position + length] = True
    position += length
  return flat.reshape(width, height).T  # column-major runs: row index varies fastest


def decode_union(rles: Iterable[str], height: int, width: int, *, item: str = "") -> np.ndarray:
  """OR of several SIIM RLE strings of one image -> bool [height, width]."""
  mask = np.zeros((height, width), dtype=bool)
  for rle in rles:
    mask |= decode_siim_rle(rle, height, width, item=item)
  return mask
