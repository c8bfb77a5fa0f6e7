"""Image views for training and evaluation: PNG decode, crops, affine, intensity; boxes follow.

Owns the pixel path of one record, from PNG bytes to a float32 [S, S] image in [0, 1] (before
normalisation), with its boxes mapped into the output image. Pure numpy + PIL; every random
choice comes from the `np.random.Generator` passed in, so a view is a function of
(record, generator state) — Grain's `random_map` supplies a per-example generator.

Train: a crop, composed with a small affine about the centre (rotation, translation, scale) and
an optional horizontal flip into one bilinear resampling pass (after an integer box reduction for
large sources), then brightness (multiplicative) and contrast (about the mean), then an optional
Gaussian blur. The crop is `crop='random_resized'` (area fraction `crop_scale`, aspect
`crop_ratio`; ConVIRT / LoVT, METHODS.md §2.4, §5.3) or `crop='pad_crop'` (pad to square, resize
to S / `crop_fraction`, random S x S crop at integer offsets: GLoRIA / MGCA's Resize(256) +
RandomCrop(224), §3.3, §4.3). The blur is torchvision's `GaussianBlur` as LoVT uses it: kernel
side int(`blur_kernel_fraction` * S) made odd, sigma ~ U(`blur_sigma`), reflect padding, applied
with probability `blur_prob` (`gaussian_blur`, a pure function). Without intermediate clamping,
brightness and contrast commute, so torchvision's random order of the two is the same image.
Eval: pad to square, resize.
Boxes are normalised (xmin, ymin, xmax, ymax); they are mapped through the same geometry,
clipped to the image and dropped when nothing of them is left inside.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping

import numpy as np
from PIL import Image

from data_pipeline import errors

_RESAMPLE = Image.Resampling.BILINEAR


def decode_png(data: bytes, *, item: str = "") -> Image.Image:
  """Decodes 1-channel PNG bytes to a PIL image: mode 'L' (8-bit) or 'F' in [0, 1] (16-bit).

  Raises:
    errors.BadImageError: the bytes are not a readable image, or the image is empty.
  """
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except Exception as e:  # PIL raises many types for garbage bytes.
    raise errors.BadImageError(item, f"PNG does not decode: {type(e).__name__}: {e}") from e
  if img.width == 0 or img.height == 0:
    raise errors.BadImageError(item, f"empty image {img.width}x{img.height}")
  if img.mode == "L":
    return img
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    arr = np.asarray(img, dtype=np.float32) / 65535.0
    return Image.fromarray(arr, mode="F")
  if img.mode in ("RGB", "RGBA", "LA", "P", "1"):
    return img.convert("L")
  raise errors.BadImageError(item, f"unsupported PNG mode {img.mode!r}; expected 8- or 16-bit "
                             "grayscale")


def to_float01(img: Image.Image) -> np.ndarray:
  """PIL 'L' or 'F' image -> float32 [H, W] in [0, 1]."""
  if img.mode == "L":
    return np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
  return np.array(img, dtype=np.float32)  # A writable copy.


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float], ratio: tuple[float, float]
                            ) -> tuple[float, float, float, float]:
  """A crop (x0, y0, w, h) in pixels covering `scale` of the area with aspect w/h in `ratio`.

  Ten tries as in Inception-style crops; falls back to the largest centred crop whose aspect
  is within `ratio`.
  """
  area = float(height * width)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = math.sqrt(target * aspect)
    h = math.sqrt(target / aspect)
    if 0 < w <= width and 0 < h <= height:
      x0 = rng.uniform(0, width - w)
      y0 = rng.uniform(0, height - h)
      return x0, y0, w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = float(width), width / ratio[0]
  elif in_ratio > ratio[1]:
    w, h = height * ratio[1], float(height)
  else:
    w, h = float(width), float(height)
  return (width - w) / 2, (height - h) / 2, w, h


def _clip_boxes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Clips normalised boxes to [0, 1]; keep = boxes with positive area left inside."""
  clipped = np.clip(boxes, 0.0, 1.0)
  keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
  return clipped.astype(np.float32), keep


def _affine_boxes(boxes: np.ndarray, forward: np.ndarray) -> np.ndarray:
  """Maps normalised boxes through a 2x3 forward affine (normalised coords); axis-aligned hull."""
  if not len(boxes):
    return boxes
  xs = boxes[:, [0, 2, 2, 0]]
  ys = boxes[:, [1, 1, 3, 3]]
  nx = forward[0, 0] * xs + forward[0, 1] * ys + forward[0, 2]
  ny = forward[1, 0] * xs + forward[1, 1] * ys + forward[1, 2]
  return np.stack([nx.min(1), ny.min(1), nx.max(1), ny.max(1)], axis=1)


def _get(cfg: Mapping[str, Any], key: str, default):
  return cfg[key] if key in cfg else default


CROPS = ("random_resized", "pad_crop")


def pad_crop_box(rng: np.random.Generator, height: int, width: int, size: int,
                 crop_fraction: float) -> tuple[float, float, float, float]:
  """GLoRIA / MGCA's crop as a box (x0, y0, w, h) in source pixels (it may leave the image).

  The source is centred in a square of side P = max(H, W) (black padding), the square resized to
  R = round(size / crop_fraction) and a size x size window taken at integer offsets drawn
  uniformly from [0, R - size] (torchvision RandomCrop). The window covers crop_fraction * P
  source pixels per side.
  """
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f"config.data.augment.crop_fraction={crop_fraction} must be in (0, 1] "
                     "(GLoRIA / MGCA: 224 / 256 = 0.875)")
  side = float(max(height, width))
  resized = max(size, int(round(size / crop_fraction)))
  i = int(rng.integers(0, resized - size + 1))
  j = int(rng.integers(0, resized - size + 1))
  scale = side / resized
  x0 = j * scale - (side - width) / 2
  y0 = i * scale - (side - height) / 2
  return x0, y0, size * scale, size * scale


def gaussian_kernel_size(size: int, fraction: float) -> int:
  """LoVT's blur kernel side: int(fraction * size), made odd (0.1 * 224 -> 23; below 10 px: 1,
  no blur)."""
  k = int(fraction * size)
  return k + 1 if k % 2 == 0 else k


def gaussian_blur(x: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
  """torchvision's `gaussian_blur` on a float [H, W] image: a separable Gaussian kernel sampled
  at -(k-1)/2 .. (k-1)/2 and normalised to sum 1, reflect padding (edge not repeated)."""
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"gaussian blur kernel_size={kernel_size} must be odd and >= 1")
  if sigma <= 0:
    raise ValueError(f"gaussian blur sigma={sigma} must be > 0")
  half = (kernel_size - 1) / 2
  t = np.linspace(-half, half, kernel_size)
  w = np.exp(-0.5 * (t / sigma) ** 2)
  w = (w / w.sum()).astype(np.float32)
  r = kernel_size // 2
  p = np.pad(x.astype(np.float32, copy=False), r, mode="reflect")
  h, wd = x.shape
  rows = np.zeros((h + 2 * r, wd), np.float32)
  for k in range(kernel_size):  # horizontal pass
    rows += w[k] * p[:, k:k + wd]
  out = np.zeros((h, wd), np.float32)
  for k in range(kernel_size):  # vertical pass
    out += w[k] * rows[k:k + h]
  return out


def train_view(img: Image.Image, boxes: np.ndarray, rng: np.random.Generator, size: int,
               aug: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A random training view.

  Args:
    img: decoded image ('L' or 'F').
    boxes: float [N, 4] normalised (xmin, ymin, xmax, ymax) in `img`.
    rng: the per-example generator; the only source of randomness.
    size: output side S.
    aug: config.data.augment (enabled, crop, crop_scale, crop_ratio, crop_fraction,
      rotation_deg, translate, scale, brightness, contrast, hflip, blur_sigma, blur_prob,
      blur_kernel_fraction).

  Returns:
    (image float32 [S, S] in [0, 1], boxes float32 [N, 4] in the output, keep bool [N]).
  """
  if not _get(aug, "enabled", True):
    return eval_view(img, boxes, size)
  width, height = img.size
  crop = str(_get(aug, "crop", "random_resized"))
  if crop == "random_resized":
    x0, y0, cw, ch = random_resized_crop_box(
        rng, height, width, tuple(_get(aug, "crop_scale", (1.0, 1.0))),
        tuple(_get(aug, "crop_ratio", (1.0, 1.0))))
  elif crop == "pad_crop":
    x0, y0, cw, ch = pad_crop_box(rng, height, width, size,
                                  float(_get(aug, "crop_fraction", 0.875)))
  else:
    raise ValueError(f"config.data.augment.crop={crop!r} is not one of {CROPS}; use "
                     "'random_resized' (ConVIRT / LoVT) or 'pad_crop' (GLoRIA / MGCA)")
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  bx = boxes.copy()
  bx[:, [0, 2]] = (boxes[:, [0, 2]] * width - x0) / cw
  bx[:, [1, 3]] = (boxes[:, [1, 3]] * height - y0) / ch

  # Small affine about the centre, from crop coordinates u to output coordinates q (both
  # normalised to [0, 1]): q = s R(theta) F (u - c) + c + t, F the optional horizontal flip.
  rot = float(_get(aug, "rotation_deg", 0.0))
  theta = math.radians(rng.uniform(-rot, rot)) if rot > 0 else 0.0
  tr = float(_get(aug, "translate", 0.0))
  tx, ty = (rng.uniform(-tr, tr, size=2) if tr > 0 else (0.0, 0.0))
  sc = tuple(_get(aug, "scale", (1.0, 1.0)))
  s = rng.uniform(sc[0], sc[1]) if sc[1] > sc[0] else float(sc[0])
  flip = bool(_get(aug, "hflip", False)) and rng.uniform() < 0.5
  cos, sin = math.cos(theta), math.sin(theta)
  lin = s * np.array([[cos, -sin], [sin, cos]])
  if flip:
    lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
  c = np.array([0.5, 0.5])
  shift = c + np.array([tx, ty]) - lin @ c
  forward = np.concatenate([lin, shift[:, None]], axis=1)
  bx = _affine_boxes(bx, forward)

  # One resampling pass: output pixel -> q -> u -> source pixel. An integer box reduction first
  # keeps the remaining bilinear scale near 1 (antialiasing for large sources); PIL's bilinear
  # affine does not filter, and crop+resize+affine in two passes costs twice as much.
  r = max(1, int(round(min(cw, ch) / size)))
  src = img.reduce(r) if r > 1 else img
  out_to_q = np.diag([1.0 / size, 1.0 / size, 1.0])
  q_to_u = np.eye(3)
  inv_lin = np.linalg.inv(lin)
  q_to_u[:2, :2] = inv_lin
  q_to_u[:2, 2] = -inv_lin @ shift
  u_to_src = np.array([[cw / r, 0.0, x0 / r], [0.0, ch / r, y0 / r], [0.0, 0.0, 1.0]])
  m = u_to_src @ q_to_u @ out_to_q
  out = src.transform((size, size), Image.Transform.AFFINE, tuple(m[:2].reshape(-1)),
                      resample=_RESAMPLE, fillcolor=0)

  x = to_float01(out)
  b = float(_get(aug, "brightness", 0.0))
  if b > 0:
    x *= np.float32(rng.uniform(1.0 - b, 1.0 + b))
  ct = float(_get(aug, "contrast", 0.0))
  if ct > 0:
    m = np.float32(x.mean())
    x = (x - m) * np.float32(rng.uniform(1.0 - ct, 1.0 + ct)) + m
  np.clip(x, 0.0, 1.0, out=x)
  sig = tuple(float(v) for v in _get(aug, "blur_sigma", (0.0, 0.0)))
  if sig[1] > 0:
    if not 0 < sig[0] <= sig[1]:
      raise ValueError(f"config.data.augment.blur_sigma={sig} must be (low, high) with "
                       "0 < low <= high, or (0, 0) for no blur (ConVIRT / LoVT: (0.1, 3.0))")
    if rng.uniform() < float(_get(aug, "blur_prob", 1.0)):
      k = gaussian_kernel_size(size, float(_get(aug, "blur_kernel_fraction", 0.1)))
      x = gaussian_blur(x, k, float(rng.uniform(sig[0], sig[1])))
  bx, keep = _clip_boxes(bx)
  return x, bx, keep


def eval_view(img: Image.Image, boxes: np.ndarray, size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The deterministic evaluation view: pad to square (centred, black), resize to S².

  Returns:
    (image float32 [S, S] in [0, 1], boxes float32 [N, 4] in the output, keep bool [N]).
  """
  width, height = img.size
  side = max(width, height)
  scale = size / side
  nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
  px, py = (size - nw) // 2, (size - nh) // 2
  resized = img.resize((nw, nh), _RESAMPLE)
  x = np.zeros((size, size), np.float32)
  x[py:py + nh, px:px + nw] = to_float01(resized)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  bx = boxes.copy()
  bx[:, [0, 2]] = (boxes[:, [0, 2]] * nw + px) / size
  bx[:, [1, 3]] = (boxes[:, [1, 3]] * nh + py) / size
  bx, keep = _clip_boxes(bx)
  return x, bx, keep
