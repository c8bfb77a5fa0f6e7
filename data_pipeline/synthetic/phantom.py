"""Chest-radiograph phantoms: anatomy, findings at known places, ground-truth masks and boxes.

This module owns the pixels of the synthetic data set. `sample_findings` draws what a study
shows (0-3 findings, ~28 % normal); `render_frontal` / `render_lateral` draw a display image
(float32 in [0, 1], bright = dense, the way a radiologist sees it) with vectorised numpy, and for
frontal views one binary mask and one tight box per finding.

Conventions:
- Sides are the *patient's*: on a frontal (PA or AP) image the patient's right is image left.
- Zones split each lung's craniocaudal extent into thirds: upper | middle | lower.
- Boxes are (xmin, ymin, xmax, ymax) in pixels of the image with slice convention: xmax/ymax are
  one past the last mask column/row, so `mask[ymin:ymax, xmin:xmax]` holds the whole mask and
  `xmax / width` is the normalised right edge. `mask_box(mask)` is the definition.
- Sizes are in mm; `pixel_spacing_mm` converts (the DICOM PixelSpacing of the written file).

Variants (`VARIANTS`): `realistic` (the default) draws findings at clinical sizes (a nodule
8-30 mm); `calibrated` draws them about twice as large and 1.3x denser, so that a 12 x 12
feature grid can point at them (the localisation benchmark, docs/localisation.md: its grid
oracle reaches >= 0.8 pointing). The variant is an argument of `sample_findings`,
`render_frontal` and `render` (default `realistic`); the tree writer passes
`write_mimic_tree(variant=...)` through to them.

Over 400 lines on purpose: one job, the pixels of the synthetic set (anatomy, each finding's shape,
its mask and box drawn together), whose parts share the same coordinate conventions and are pinned
by the localisation benchmark's calibration; splitting it would scatter those conventions.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FINDING_NAMES = ("nodule", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly",
                 "atelectasis", "support_device")
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
DEVICES = ("et_tube", "central_line", "pacemaker")
FRONTAL_VIEWS = ("PA", "AP")
VIEWS = FRONTAL_VIEWS + ("LATERAL",)

VARIANTS = ("realistic", "calibrated")
# Per variant: (nodule, consolidation, effusion (3 bands), pneumothorax (2 bands), atelectasis
# length) size ranges in mm, atelectasis thickness range, and a contrast factor on every lesion.
_SIZES = {
    "realistic": {"nodule": (8, 30), "consolidation": (35, 85),
                  "pleural_effusion": ((22, 35), (35, 70), (70, 110)),
                  "pneumothorax": ((8, 20), (20, 40)), "atelectasis": (30, 65),
                  "atelectasis_thick": (4.0, 9.0), "contrast": 1.0},
    "calibrated": {"nodule": (28, 50), "consolidation": (70, 110),
                   "pleural_effusion": ((50, 70), (70, 100), (100, 130)),
                   "pneumothorax": ((30, 45), (45, 60)), "atelectasis": (60, 95),
                   "atelectasis_thick": (12.0, 20.0), "contrast": 1.3},
}


def check_variant(name: str) -> str:
  """`name` if it is a phantom variant, else a ValueError listing them."""
  if name not in VARIANTS:
    raise ValueError(f"phantom variant {name!r} is not known; use one of {VARIANTS}")
  return name


# Relative frequency of each finding in a non-normal study.
_FINDING_WEIGHTS = {"nodule": 0.18, "consolidation": 0.18, "pleural_effusion": 0.17,
                    "pneumothorax": 0.11, "cardiomegaly": 0.12, "atelectasis": 0.12,
                    "support_device": 0.12}
# Probability of 0, 1, 2, 3 findings in a study.
_COUNT_PROBS = (0.28, 0.38, 0.22, 0.12)
# Findings that may be reported as uncertain ("possible ...") and how often.
_UNCERTAIN_OK = ("consolidation", "pleural_effusion", "pneumothorax", "atelectasis")
_UNCERTAIN_PROB = 0.12


@dataclasses.dataclass(frozen=True)
class Finding:
  """What a study shows, before rendering.

  Attributes:
    name: one of FINDING_NAMES.
    side: patient's "right" | "left", or None (cardiomegaly, an ET tube).
    zone: "upper" | "middle" | "lower", or None (cardiomegaly).
    size_mm: nodule diameter, consolidation/atelectasis extent, effusion height, pneumothorax rim
      width, heart transverse diameter or device length, in mm.
    uncertain: the report hedges ("possible ..."), CheXpert label -1; drawn fainter.
    device: for support_device, one of DEVICES.
  """
  name: str
  side: Optional[str]
  zone: Optional[str]
  size_mm: float
  uncertain: bool = False
  device: Optional[str] = None


@dataclasses.dataclass
class RenderedFinding:
  """A finding as drawn: its mask (bool [H, W]) and tight box (see module docstring)."""
  finding: Finding
  mask: np.ndarray
  box: tuple[int, int, int, int]


@dataclasses.dataclass
class Phantom:
  """One rendered radiograph.

  Attributes:
    image: float32 [H, W] display image in [0, 1], bright = dense.
    view: "PA" | "AP" | "LATERAL".
    pixel_spacing_mm: size of one pixel (square pixels).
    findings: rendered findings with masks (frontal views only; empty on laterals).
    cardiothoracic_ratio: heart width / inner thorax width as drawn.
    lungs: bool [H, W] lung fields outside the heart (frontal views; None on laterals).
  """
  image: np.ndarray
  view: str
  pixel_spacing_mm: float
  findings: list[RenderedFinding]
  cardiothoracic_ratio: float
  lungs: Optional[np.ndarray] = None


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
  """Tight box (xmin, ymin, xmax, ymax) of a non-empty bool mask, xmax/ymax exclusive."""
  cols = np.flatnonzero(mask.any(axis=0))
  rows = np.flatnonzero(mask.any(axis=1))
  if cols.size == 0:
    raise ValueError("mask_box got an empty mask; render the finding inside the image first")
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def sample_findings(rng: np.random.Generator, *, view: str = "PA",
                    variant: str = "realistic") -> list[Finding]:
  """Draws 0-3 distinct findings for one study (about 28 % of studies are normal).

  Args:
    rng: the study's generator.
    view: the frontal view; portable AP studies carry support devices more often.
    variant: 'realistic' | 'calibrated' sizes (module docstring).

  Returns:
    Findings with side, zone, size and certainty; no finding name repeats.
  """
  sizes = _SIZES[check_variant(variant)]
  count = int(rng.choice(len(_COUNT_PROBS), p=_COUNT_PROBS))
  names = list(_FINDING_WEIGHTS)
  weights = np.array([_FINDING_WEIGHTS[n] for n in names])
  if view == "AP":
    weights[names.index("support_device")] *= 3.0
  chosen = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
  out = []
  for idx in sorted(int(i) for i in chosen):
    name = names[idx]
    side = SIDES[int(rng.integers(2))]
    zone = ZONES[int(rng.integers(3))]
    device = None
    if name == "nodule":
      size = float(rng.uniform(*sizes["nodule"]))
    elif name == "consolidation":
      size = float(rng.uniform(*sizes["consolidation"]))
    elif name == "pleural_effusion":
      zone = "lower"
      size = float(rng.choice([rng.uniform(*band) for band in sizes["pleural_effusion"]],
                              p=[0.5, 0.35, 0.15]))
    elif name == "pneumothorax":
      zone = "upper"
      size = float(rng.choice([rng.uniform(*band) for band in sizes["pneumothorax"]],
                              p=[0.6, 0.4]))
    elif name == "cardiomegaly":
      side, zone, size = None, None, 0.0  # size filled in by the renderer (heart width)
    elif name == "atelectasis":
      zone = ("middle", "lower")[int(rng.integers(2))]
      size = float(rng.uniform(*sizes["atelectasis"]))
    else:  # support_device
      device = DEVICES[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
      if device == "et_tube":
        side, zone = None, "upper"
      elif device == "pacemaker":
        side = "left" if rng.random() < 0.85 else "right"
        zone = "upper"
      else:
        zone = "upper"
      size = 0.0  # filled in by the renderer (device extent)
    uncertain = name in _UNCERTAIN_OK and rng.random() < _UNCERTAIN_PROB
    out.append(Finding(name, side, zone, round(size, 1), uncertain, device))
  return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
  """Zero-mean, unit-ish std noise with features about `cell` pixels wide (bicubic upsampled)."""
  gh = max(2, int(math.ceil(height / cell)) + 1)
  gw = max(2, int(math.ceil(width / cell)) + 1)
  coarse = rng.standard_normal((gh, gw)).astype(np.float32)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def _draw(height: int, width: int, paint) -> np.ndarray:
  """Rasterises with PIL ImageDraw (`paint(draw)`) into a bool mask."""
  canvas = Image.new("L", (width, height), 0)
  paint(ImageDraw.Draw(canvas))
  return np.asarray(canvas) > 127


def _soften(mask: np.ndarray, radius: float) -> np.ndarray:
  """Gaussian-softened float copy of a bool mask (for drawing, not for annotation)."""
  img = Image.fromarray(mask.astype(np.uint8) * 255)
  return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


@dataclasses.dataclass
class _Anatomy:
  """Per-image anatomy parameters in pixels (frontal view)."""
  height: int
  width: int
  mid: float  # spine centre x
  cy: float  # rotation centre y
  angle: float  # radians
  thorax: float  # inner half-width of the thorax
  apex: float  # lung apex y
  base: tuple[float, float]  # costophrenic y (image-left lung, image-right lung)
  dome: tuple[float, float]  # dome height above the base
  medial: float  # half-width of the mediastinum at lung level
  heart_x: float
  heart_y: float
  heart_a: float  # half-width
  heart_b: float  # half-height


def _sample_anatomy(rng: np.random.Generator, height: int, width: int, view: str,
                    ctr: float) -> _Anatomy:
  mid = width * (0.5 + rng.uniform(-0.03, 0.03))
  thorax = width * rng.uniform(0.36, 0.42)
  apex = height * rng.uniform(0.10, 0.17)
  base_r = height * rng.uniform(0.70, 0.80)
  base_l = base_r + height * rng.uniform(0.0, 0.04)
  dome_r = height * rng.uniform(0.06, 0.10)
  dome_l = dome_r * rng.uniform(0.75, 1.0)
  heart_a = ctr * thorax
  heart_b = heart_a * rng.uniform(0.70, 0.82)
  if view == "AP":
    heart_b *= 1.05
  heart_x = mid + heart_a * rng.uniform(0.18, 0.30)
  heart_y = base_r - dome_r * 0.9 - heart_b * 0.3
  return _Anatomy(height=height, width=width, mid=mid, cy=height * 0.5,
                  angle=math.radians(rng.uniform(-3.0, 3.0)), thorax=thorax, apex=apex,
                  base=(base_r, base_l), dome=(dome_r, dome_l),
                  medial=width * rng.uniform(0.045, 0.06),
                  heart_x=heart_x, heart_y=heart_y, heart_a=heart_a, heart_b=heart_b)


def _lung_field(an: _Anatomy, x: np.ndarray, y: np.ndarray, image_side: int,
                edge: float = 1.5) -> np.ndarray:
  """Soft (0..1) field of one lung; image_side -1 = image left (patient right), +1 = image right."""
  i = 0 if image_side < 0 else 1
  base, dome = an.base[i], an.dome[i]
  inner = an.mid + image_side * an.medial
  outer = an.mid + image_side * an.thorax
  half = abs(outer - inner) / 2.0
  cx = (inner + outer) / 2.0
  lb = (base - an.apex) * 0.62
  cy = an.apex + lb
  # Horizontal half-axis grows downwards: narrow apex, wide base.
  t = np.clip((y - an.apex) / (base - an.apex), 0.0, 1.3)
  a = half * (0.80 + 0.32 * t)
  dx = (x - cx - image_side * half * 0.10 * t) / a
  dy = (y - cy) / lb
  r = np.sqrt(dx * dx + dy * dy)
  shell = _sigmoid((1.0 - r) * min(a.min(), lb) / edge)
  dome_y = base - dome * np.clip(1.0 - ((x - cx + image_side * half * 0.15) / (half * 1.15)) ** 2,
                                 0.0, 1.0)
  below = _sigmoid((dome_y - y) / edge)
  return (shell * below).astype(np.float32)


def _coords(an: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
  """Pixel coordinates rotated by the patient's tilt (anatomy frame)."""
  yy, xx = np.mgrid[0:an.height, 0:an.width].astype(np.float32)
  c, s = math.cos(an.angle), math.sin(an.angle)
  dx, dy = xx - an.mid, yy - an.cy
  return (an.mid + c * dx + s * dy).astype(np.float32), (an.cy - s * dx + c * dy).astype(np.float32)


def _zone_rows(an: _Anatomy, zone: str, image_side: int) -> tuple[float, float]:
  base = an.base[0 if image_side < 0 else 1] - an.dome[0 if image_side < 0 else 1] * 0.3
  third = (base - an.apex) / 3.0
  k = ZONES.index(zone)
  return an.apex + k * third, an.apex + (k + 1) * third


def _pick_point(rng: np.random.Generator, lung: np.ndarray, an: _Anatomy, zone: str,
                image_side: int, radius: float) -> tuple[float, float]:
  """A pixel inside `lung` in the zone, preferring points `radius` away from the lung edge."""
  y0, y1 = _zone_rows(an, zone, image_side)
  h, w = lung.shape
  ys, xs = np.nonzero(lung[int(max(0, y0)):int(min(h, y1)), :])
  ys = ys + int(max(0, y0))
  keep = (xs - an.mid) * image_side > 0
  ys, xs = ys[keep], xs[keep]
  if ys.size == 0:
    ys, xs = np.nonzero(lung)
  pick = rng.integers(0, ys.size, size=200)
  px, py = xs[pick].astype(np.float32), ys[pick].astype(np.float32)
  score = np.zeros(pick.size, np.int32)
  for ang in np.linspace(0.0, 2 * np.pi, 12, endpoint=False):
    for frac in (0.5, 1.0):
      qx = np.rint(px + math.cos(ang) * radius * frac).astype(np.int64)
      qy = np.rint(py + math.sin(ang) * radius * frac).astype(np.int64)
      inside = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
      score += inside & lung[np.clip(qy, 0, h - 1), np.clip(qx, 0, w - 1)]
  j = int(np.argmax(score))  # the first candidate with the most of its disc inside the lung
  return float(px[j]), float(py[j])


def _image_side(finding: Finding, rng: np.random.Generator) -> int:
  side = finding.side or SIDES[int(rng.integers(2))]
  return -1 if side == "right" else 1  # patient's right is image left on frontal views


def render_frontal(rng: np.random.Generator, height: int, width: int,
                   findings: Sequence[Finding], *, pixel_spacing_mm: float,
                   view: str = "PA", variant: str = "realistic") -> Phantom:
  """Draws a frontal (PA/AP) chest radiograph with `findings` and their masks.

  Args:
    rng: generator (the image is a pure function of its state and the other arguments).
    height: rows.
    width: columns.
    findings: what to draw (from `sample_findings`).
    pixel_spacing_mm: mm per pixel, converts the findings' sizes.
    view: "PA" or "AP" (AP: slightly magnified heart, lower inspiration).
    variant: lesion contrast and atelectasis thickness of 'realistic' | 'calibrated' (module
      docstring).

  Returns:
    The phantom; `findings` keep their order, each with a non-empty mask and its tight box.
    A finding's `size_mm` of 0 (cardiomegaly, devices) is replaced by the drawn size.
  """
  if view not in FRONTAL_VIEWS:
    raise ValueError(f"render_frontal got view={view!r}; use one of {FRONTAL_VIEWS} or "
                     "render_lateral for LATERAL")
  if min(height, width) < 64:
    raise ValueError(f"image size {height}x{width} is too small to draw anatomy; use >= 64 px")
  sizes = _SIZES[check_variant(variant)]
  names = [f.name for f in findings]
  cardio = "cardiomegaly" in names
  ctr = rng.uniform(0.56, 0.68) if cardio else rng.uniform(0.40, 0.48)
  an = _sample_anatomy(rng, height, width, view, ctr)
  # Drawn before any finding, so adding or removing a finding leaves exposure and noise alone.
  detector_rng = np.random.default_rng(rng.integers(0, 2**63))
  x, y = _coords(an)
  w, h = float(width), float(height)
  px_per_mm = 1.0 / pixel_spacing_mm

  # --- body: soft tissue thicker in the middle, shoulders and neck at the top.
  dxm = x - an.mid
  body_half = an.thorax * rng.uniform(1.12, 1.2)
  neck_half = an.thorax * 0.32
  shoulder_y = an.apex - h * 0.02
  half_at_y = neck_half + (body_half - neck_half) * _sigmoid((y - shoulder_y) / (h * 0.025))
  body = _sigmoid((half_at_y - np.abs(dxm)) / 2.0)
  thickness = np.sqrt(np.clip(1.0 - (dxm / (half_at_y * 1.05)) ** 2, 0.0, 1.0))
  density = (0.55 + 0.45 * thickness) * body

  # --- lungs (air lowers density), hila, vascular markings.
  lung_r = _lung_field(an, x, y, -1)
  lung_l = _lung_field(an, x, y, +1)
  heart_f = ((x - an.heart_x) / an.heart_a) ** 2 + ((y - an.heart_y) / an.heart_b) ** 2
  heart = _sigmoid((1.0 - np.sqrt(heart_f)) * an.heart_a / 3.0)
  heart = heart * _sigmoid((an.heart_y + an.heart_b * 0.6 - y) / 3.0)  # sits on the diaphragm
  lungs = np.maximum(lung_r, lung_l)
  hila_y = an.apex + (max(an.base) - an.apex) * 0.45
  hd = an.medial + an.thorax * 0.12
  side_sign = np.where(dxm < 0, -1.0, 1.0).astype(np.float32)
  vx = np.abs(dxm) - hd
  vy = y - hila_y
  theta = np.arctan2(vy, vx)
  rr = np.sqrt(vx * vx + vy * vy) + 1.0
  wobble = 0.35 * np.sin(rr / (w * 0.05) + side_sign * 1.3 + rng.uniform(0, 6.28))
  n_vessels = float(rng.integers(26, 34))
  vessel = np.exp(-(np.sin(n_vessels * 0.5 * theta + wobble + side_sign * 0.7) ** 2)
                  / (0.02 + 0.0004 * (w * 0.5 / rr)))
  vessel *= np.exp(-rr / (an.thorax * 0.45))
  vessel *= np.clip(0.55 + 0.6 * _smooth_noise(rng, height, width, w * 0.03), 0.0, 1.0)
  hilum = np.exp(-(vx ** 2 + vy ** 2) / (2 * (an.thorax * 0.08) ** 2))

  # --- findings that change the lung fields themselves are computed before composition.
  rendered: dict[int, RenderedFinding] = {}
  lung_sharp = {-1: (lung_r > 0.5) & (heart < 0.5), 1: (lung_l > 0.5) & (heart < 0.5)}
  ptx_rim = np.zeros((height, width), np.float32)
  ptx_line = np.zeros((height, width), np.float32)
  extra = np.zeros((height, width), np.float32)  # density added by findings
  for k, f in enumerate(findings):
    amp = 0.7 if f.uncertain else 1.0
    if f.name == "pneumothorax":
      s = _image_side(f, rng)
      i = 0 if s < 0 else 1
      width_px = f.size_mm * px_per_mm
      ax, ay = an.mid + s * an.medial, an.base[i]
      scale = 1.0 - width_px / (ay - an.apex)
      shrunk = _lung_field(an, ax + (x - ax) / scale, ay + (y - ay) / scale, s, edge=0.8)
      cut = an.apex + (an.base[i] - an.apex) * 0.7
      region = (y < cut) & ((x - an.mid) * s > 0)
      own = lung_r if s < 0 else lung_l
      mask = (own > 0.5) & (shrunk < 0.5) & region & (heart < 0.5)
      if mask.any():
        rim = np.clip(own - shrunk, 0.0, 1.0) * region * _sigmoid((cut - y) / 3.0)
        ptx_rim = np.maximum(ptx_rim, rim.astype(np.float32) * amp)
        line = 4.0 * shrunk * (1.0 - shrunk) * region * (own > 0.5)
        ptx_line = np.maximum(ptx_line, line.astype(np.float32) * amp)
        f = dataclasses.replace(f, size_mm=round(width_px * pixel_spacing_mm, 1))
        rendered[k] = RenderedFinding(f, mask, mask_box(mask))

  # --- compose anatomy.
  density = density - 0.62 * lungs * (1.0 - 0.55 * heart)
  density += 0.16 * vessel * lungs * (1.0 - ptx_rim) + 0.22 * hilum * lungs
  density -= 0.2 * ptx_rim
  density += 0.3 * ptx_line
  # Mediastinum, trachea, spine, aortic knob, heart.
  medi_half = an.medial * (1.0 + 0.25 * np.clip((y - an.apex) / (h * 0.3), 0, 1))
  mediastinum = _sigmoid((medi_half - np.abs(dxm)) / 2.5) * _sigmoid((an.heart_y - y) / 4.0)
  density += 0.32 * mediastinum * body
  trachea = (_sigmoid((w * 0.016 - np.abs(dxm + w * 0.004)) / 1.5)
             * _sigmoid((an.apex + h * 0.17 - y) / 3.0))
  density -= 0.18 * trachea * body
  spine_half = w * 0.04
  vert_period = h * rng.uniform(0.045, 0.055)
  vertebra = 0.6 + 0.4 * np.cos(2 * np.pi * y / vert_period) ** 2
  density += 0.22 * _sigmoid((spine_half - np.abs(dxm)) / 2.0) * vertebra * body
  knob_x, knob_y = an.mid + an.medial * 1.1, an.apex + h * 0.16
  knob = _sigmoid((w * 0.035 - np.sqrt((x - knob_x) ** 2 + (y - knob_y) ** 2)) / 2.0)
  density += 0.3 * knob
  density += 0.3 * heart
  # Abdomen below the domes and a gastric bubble under the left hemidiaphragm.
  bubble_x = an.mid + an.thorax * 0.45
  bubble_y = an.base[1] - an.dome[1] * 0.35 + h * 0.045
  bubble = _sigmoid((1.0 - np.sqrt(((x - bubble_x) / (w * 0.06)) ** 2
                                   + ((y - bubble_y) / (h * 0.03)) ** 2)) * 8.0)
  density -= 0.18 * bubble * (1.0 - lungs)
  # Ribs: posterior arcs, one phase field for all of them, both sides.
  d = np.abs(dxm) / an.thorax
  arc = an.thorax * (0.55 * d * d - 0.12 * d)
  q = (y - arc - (an.apex - h * 0.04)) / ((max(an.base) - an.apex) / 9.5)
  frac = q - np.floor(q)
  rib_w = 0.42
  core = np.maximum(np.sin(np.pi * np.clip(frac / rib_w, 0.0, 1.0)), 0.0)
  rib = np.where(frac < rib_w, 0.6 * np.sqrt(core) + 0.4 * (1.0 - core) ** 2, 0.0)
  rib_zone = ((q > 0) & (q < 10)) * _sigmoid((1.08 - d) * 30.0) * _sigmoid((d - 0.07) * 40.0)
  rib_zone = rib_zone * _sigmoid((max(an.base) + h * 0.02 - y) / (h * 0.02))
  density += 0.1 * rib * rib_zone * body
  # Anterior ribs: fainter, descending towards the midline.
  qa = (y + an.thorax * 0.5 * d - an.apex) / ((max(an.base) - an.apex) / 6.0)
  fa = qa - np.floor(qa)
  arib = np.where(fa < 0.3, np.sin(np.pi * np.clip(fa / 0.3, 0, 1)), 0.0)
  density += 0.05 * arib * ((qa > 1) & (qa < 6)) * _sigmoid((0.95 - d) * 30.0) * (d > 0.15)
  # Clavicles.
  clav_y = an.apex + h * rng.uniform(-0.01, 0.02) + an.thorax * (0.10 * d - 0.18 * d * d)
  clav = _sigmoid((h * 0.014 - np.abs(y - clav_y)) / 1.5) * (d > 0.1) * (d < 0.82)
  density += 0.2 * clav * body

  # --- remaining findings.
  for k, f in enumerate(findings):
    amp = (0.7 if f.uncertain else 1.0) * sizes["contrast"]
    if f.name in ("nodule", "consolidation", "atelectasis", "pleural_effusion"):
      s = _image_side(f, rng)
      lung_mask = lung_sharp[s]
      own = lung_r if s < 0 else lung_l
    if f.name == "nodule":
      r = max(2.0, f.size_mm * px_per_mm / 2.0)
      cx, cy = _pick_point(rng, lung_mask, an, f.zone, s, r)
      dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
      prof = np.sqrt(np.clip(1.0 - (dist / r) ** 2, 0.0, 1.0))
      extra += amp * 0.42 * (0.45 + 0.55 * prof) * _sigmoid((r - dist) / 0.8)
      mask = dist <= r
    elif f.name == "consolidation":
      rad = f.size_mm * px_per_mm / 2.0
      cx, cy = _pick_point(rng, lung_mask, an, f.zone, s, rad * 0.6)
      field = np.zeros((height, width), np.float32)
      for _ in range(int(rng.integers(3, 7))):
        bx = cx + rng.uniform(-0.5, 0.5) * rad
        by = cy + rng.uniform(-0.5, 0.5) * rad
        sx = rad * rng.uniform(0.3, 0.55)
        sy = sx * rng.uniform(0.6, 1.4)
        field += np.exp(-0.5 * (((x - bx) / sx) ** 2 + ((y - by) / sy) ** 2))
      tex = _smooth_noise(rng, height, width, max(4.0, rad * 0.3))
      field = field * (1.0 + 0.25 * tex)
      extra += amp * 0.45 * np.clip(field, 0.0, 1.2) * own * (0.75 + 0.25 * vessel)
      mask = (field > 0.3) & lung_mask
    elif f.name == "atelectasis":
      length = f.size_mm * px_per_mm
      cx, cy = _pick_point(rng, lung_mask, an, f.zone, s, length * 0.4)
      ang = math.radians(rng.uniform(-25, 25))
      thick = rng.uniform(*sizes["atelectasis_thick"]) * px_per_mm
      ux, uy = math.cos(ang), math.sin(ang)
      along = (x - cx) * ux + (y - cy) * uy
      across = -(x - cx) * uy + (y - cy) * ux
      taper = np.clip(1.0 - (along / (length / 2.0)) ** 2, 0.0, 1.0) ** 0.3
      halfw = thick / 2.0 * (1.0 + 0.8 * np.clip(-along / length, 0, 1))  # slight wedge
      band = _sigmoid((halfw * taper - np.abs(across)) / 0.8)
      extra += amp * 0.5 * band * own
      mask = (band > 0.5) & lung_mask
    elif f.name == "pleural_effusion":
      i = 0 if s < 0 else 1
      h_px = f.size_mm * px_per_mm
      outer = an.mid + s * an.thorax
      inner = an.mid + s * an.medial
      e = np.clip((x - outer) / (inner - outer), 0.0, 1.0)  # 0 at the lateral wall
      meniscus = an.base[i] - an.dome[i] * 0.6 - h_px * (0.45 + 0.55 * (1.0 - e) ** 3)
      fluid = _sigmoid((y - meniscus) / 2.0) * own  # fluid replaces the air below the meniscus
      fluid = fluid * (1.0 - 0.55 * heart)
      extra += amp * 0.6 * fluid * (0.85 + 0.15 * _sigmoid((y - meniscus) / (h_px * 0.3 + 1)))
      mask = (fluid > 0.5) & (heart < 0.5)
    elif f.name == "cardiomegaly":
      mask = heart > 0.5
      f = dataclasses.replace(f, size_mm=round(2 * an.heart_a * pixel_spacing_mm, 1))
    elif f.name == "support_device":
      mask, f = _draw_device(rng, f, an, pixel_spacing_mm)
      extra += 1.4 * _soften(mask, 0.6) * (0.8 if f.device != "pacemaker" else 1.0)
    else:
      continue
    if not mask.any():
      continue  # cannot happen for in-image anatomy; keeps the box contract if it ever does
    rendered[k] = RenderedFinding(f, mask, mask_box(mask))

  density = density + extra * np.maximum(body, 0.3)
  # --- detector: exposure, noise, display curve.
  display = _detector(detector_rng, density)
  heart_w = 2 * an.heart_a
  return Phantom(image=display.astype(np.float32), view=view, pixel_spacing_mm=pixel_spacing_mm,
                 findings=[rendered[k] for k in sorted(rendered)],
                 cardiothoracic_ratio=float(heart_w / (2 * an.thorax)),
                 lungs=lung_sharp[-1] | lung_sharp[1])


def _detector(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
  """Exposure, display curve and noise: density -> display image in [0, 1]."""
  height, width = density.shape
  exposure = rng.uniform(0.9, 1.15)
  display = 1.05 * (1.0 - np.exp(-exposure * np.clip(density, 0.0, None)))
  display += 0.012 * _smooth_noise(rng, height, width, width * 0.08)
  display += rng.uniform(0.01, 0.02) * rng.standard_normal((height, width), dtype=np.float32)
  return np.clip(display, 0.0, 1.0) ** rng.uniform(0.9, 1.15)


def _draw_device(rng: np.random.Generator, f: Finding, an: _Anatomy,
                 spacing: float) -> tuple[np.ndarray, Finding]:
  """Mask of a support device (ET tube, central line or pacemaker) and the finding with its size."""
  h, w = an.height, an.width
  lw = max(2, int(round(3.0 / spacing)))
  carina_y = an.apex + (max(an.base) - an.apex) * 0.33
  if f.device == "et_tube":
    tip = carina_y - rng.uniform(25, 60) / spacing
    x0 = an.mid + rng.uniform(-0.01, 0.01) * w
    pts = [(x0 + rng.uniform(-0.02, 0.02) * w, 0.0), (x0, tip * 0.5), (x0, tip)]
    mask = _draw(h, w, lambda dr: dr.line(pts, fill=255, width=lw + 1, joint="curve"))
  elif f.device == "central_line":
    s = -1 if f.side == "right" else 1
    start = (an.mid + s * an.thorax * 1.05, an.apex - h * 0.05)
    ctrl = (an.mid + s * an.thorax * 0.35, an.apex + h * 0.02)
    end = (an.mid - an.medial * 0.6, carina_y + rng.uniform(0.02, 0.08) * h)
    t = np.linspace(0.0, 1.0, 40)
    bx = (1 - t) ** 2 * start[0] + 2 * (1 - t) * t * ctrl[0] + t * t * end[0]
    by = (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * ctrl[1] + t * t * end[1]
    pts = list(zip(bx.tolist(), by.tolist()))
    mask = _draw(h, w, lambda dr: dr.line(pts, fill=255, width=lw, joint="curve"))
  else:  # pacemaker: generator box in the upper chest, leads to the right heart
    s = -1 if f.side == "right" else 1
    gx = an.mid + s * an.thorax * rng.uniform(0.55, 0.75)
    gy = an.apex + h * rng.uniform(0.02, 0.06)
    gw_, gh_ = 45.0 / spacing / 2, 38.0 / spacing / 2
    lead_end = (an.heart_x + an.heart_a * 0.2, an.heart_y + an.heart_b * 0.45)
    mid_pt = (an.mid - an.medial * 0.5, an.apex + h * 0.2)
    t = np.linspace(0.0, 1.0, 40)
    bx = (1 - t) ** 2 * gx + 2 * (1 - t) * t * mid_pt[0] + t * t * lead_end[0]
    by = (1 - t) ** 2 * gy + 2 * (1 - t) * t * mid_pt[1] + t * t * lead_end[1]
    pts = list(zip(bx.tolist(), by.tolist()))

    def paint(dr):
      dr.line(pts, fill=255, width=lw, joint="curve")
      dr.rounded_rectangle((gx - gw_, gy - gh_, gx + gw_, gy + gh_), radius=gh_ * 0.5, fill=255)
    mask = _draw(h, w, paint)
  x0, y0, x1, y1 = mask_box(mask) if mask.any() else (0, 0, 0, 0)
  extent = math.hypot(x1 - x0, y1 - y0) * spacing
  return mask, dataclasses.replace(f, size_mm=round(extent, 1))


def render_lateral(rng: np.random.Generator, height: int, width: int,
                   findings: Sequence[Finding], *, pixel_spacing_mm: float) -> Phantom:
  """Draws a lateral chest radiograph (anterior = image left) without annotations.

  Simpler anatomy than the frontal view: body, one lucent lung field, spine with vertebrae,
  sternum, heart, domes. Cardiomegaly, effusion, nodule/consolidation and devices show up
  roughly; no masks are made (`findings` of the result is empty).
  """
  if min(height, width) < 64:
    raise ValueError(f"image size {height}x{width} is too small to draw anatomy; use >= 64 px")
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  h, w = float(height), float(width)
  names = {f.name: f for f in findings}
  detector_rng = np.random.default_rng(rng.integers(0, 2**63))
  cx = w * rng.uniform(0.48, 0.52)
  depth = w * rng.uniform(0.40, 0.45)  # half AP diameter of the body
  body = _sigmoid((depth * (1.0 + 0.04 * (yy / h)) - np.abs(xx - cx)) / 2.0)
  thickness = np.sqrt(np.clip(1.0 - ((xx - cx) / (depth * 1.05)) ** 2, 0.0, 1.0))
  density = (0.75 + 0.25 * thickness) * body
  apex, base = h * rng.uniform(0.1, 0.16), h * rng.uniform(0.72, 0.8)
  lcx = cx - depth * 0.05
  lcy, lb = (apex + base) / 2, (base - apex) / 2 * 1.1
  la = depth * 0.78
  dome = (base - h * 0.07 * np.clip(1 - ((xx - lcx) / la) ** 2, 0, 1)
          + h * 0.05 * (xx - lcx) / la)  # the posterior sulcus lies lower
  lung = (_sigmoid((1 - np.sqrt(((xx - lcx) / la) ** 2 + ((yy - lcy) / lb) ** 2)) * 25)
          * _sigmoid((dome - yy) / 3.0))
  density -= 0.5 * lung
  hx_, hy_ = lcx + depth * 0.05, (apex + base) / 2
  vx, vy = xx - hx_, yy - hy_
  rr = np.sqrt(vx * vx + vy * vy) + 1.0
  theta = np.arctan2(vy, vx)
  vessel = np.exp(-(np.sin(14.0 * theta + 0.4 * np.sin(rr / (w * 0.05))) ** 2) / 0.03)
  vessel *= np.exp(-rr / (depth * 0.5))
  hilum = np.exp(-((vx / (w * 0.06)) ** 2 + (vy / (h * 0.07)) ** 2))
  density += (0.1 * vessel + 0.2 * hilum) * lung
  arms = _sigmoid((apex + h * 0.06 - yy) / (h * 0.03))
  density += 0.25 * arms * body
  spine_x = cx + depth * 0.62
  vert = 0.5 + 0.5 * _sigmoid((np.cos(2 * np.pi * yy / (h * 0.055)) + 0.75) * 8.0)
  spine = _sigmoid((w * 0.07 - np.abs(xx - spine_x)) / 2.0) * vert * (yy > apex - h * 0.1)
  density += 0.3 * spine
  # Posterior ribs crossing the back of the lung, sternum in front.
  q = (yy + 0.25 * (xx - cx)) / (h * 0.075)
  frac = q - np.floor(q)
  density += 0.06 * (frac < 0.35) * _sigmoid((xx - cx) / (w * 0.05)) * lung
  density += 0.25 * _sigmoid((w * 0.014 - np.abs(xx - (cx - depth * 0.9))) / 1.5) * (yy > apex)
  ha = depth * (0.52 if "cardiomegaly" in names else 0.40)
  hx, hy = cx - depth * 0.3, base - h * 0.1
  heart = _sigmoid((1 - np.sqrt(((xx - hx) / ha) ** 2 + ((yy - hy) / (ha * 0.95)) ** 2)) * 10)
  heart = heart * _sigmoid((dome - yy) / 3.0)
  density += 0.35 * heart * (0.5 + 0.5 * lung)
  px_per_mm = 1.0 / pixel_spacing_mm
  for f in findings:
    amp = 0.7 if f.uncertain else 1.0
    zone_y = {None: lcy, "upper": apex + lb * 0.4, "middle": lcy, "lower": base - lb * 0.45}
    if f.name in ("nodule", "consolidation"):
      r = f.size_mm * px_per_mm / 2.0
      bx, by = cx + rng.uniform(-0.4, 0.4) * la, zone_y[f.zone]
      dist = np.sqrt((xx - bx) ** 2 + (yy - by) ** 2)
      density += amp * 0.35 * _sigmoid((r - dist) / (1.0 if f.name == "nodule" else r * 0.3))
    elif f.name == "pleural_effusion":
      level = base - f.size_mm * px_per_mm * (1 - 0.5 * np.clip((spine_x - xx) / (2 * la), 0, 1))
      density += amp * 0.45 * _sigmoid((yy - level) / 2.0) * lung * (1.0 - 0.7 * heart)
    elif f.name == "support_device" and f.device == "pacemaker":
      gx, gy = cx - depth * 0.7, apex + h * 0.05
      density += 1.2 * ((np.abs(xx - gx) < 12 * px_per_mm) & (np.abs(yy - gy) < 20 * px_per_mm))
  display = _detector(detector_rng, density)
  return Phantom(image=display.astype(np.float32), view="LATERAL",
                 pixel_spacing_mm=pixel_spacing_mm, findings=[], cardiothoracic_ratio=float("nan"))


def render(rng: np.random.Generator, view: str, height: int, width: int,
           findings: Sequence[Finding], *, pixel_spacing_mm: float,
           variant: str = "realistic") -> Phantom:
  """Dispatches to `render_frontal` (PA/AP, with `variant`) or `render_lateral` (LATERAL)."""
  if view == "LATERAL":
    return render_lateral(rng, height, width, findings, pixel_spacing_mm=pixel_spacing_mm)
  if view in FRONTAL_VIEWS:
    return render_frontal(rng, height, width, findings, pixel_spacing_mm=pixel_spacing_mm,
                          view=view, variant=variant)
  raise ValueError(f"unknown view {view!r}; use one of {VIEWS}")
