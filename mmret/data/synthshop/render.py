"""Procedural product pictures: category silhouette x color x pattern, on a varied background.

Rendering is vectorised over a batch of items: every pixel of every image is a point (x, y) in
[-1, 1]^2 (y points down); the item's placement maps it to object coordinates (u, v) =
((x, y) - center) / scale, where each category's silhouette is a boolean function of (u, v) (a
distinct shape per category) and the pattern a function of the rotated (u, v). So the picture
carries the category, the color and the pattern, while position, scale, pattern phase, background
and pixel noise vary per item.
"""

import dataclasses

import numpy as np

from mmret.data.synthshop import catalog as catalog_lib
from mmret.data.synthshop import vocab


@dataclasses.dataclass
class Placement:
  """Per-item rendering variation, all float32 [N] unless noted.

  center_x, center_y: object center in [-1, 1] image coordinates.  scale: object size.
  angle: pattern orientation (radians).  phase: pattern offset in object units.
  background: float32 [N, 3] RGB base.  tilt: float32 [N, 2] background gradient.
  """
  center_x: np.ndarray
  center_y: np.ndarray
  scale: np.ndarray
  angle: np.ndarray
  phase: np.ndarray
  background: np.ndarray
  tilt: np.ndarray


def sample_placements(config, n: int) -> Placement:
  """Samples the per-item variation for n items (its own stream: independent of the chunking)."""
  rng = catalog_lib.rng_for(config.seed, catalog_lib.STREAM_RENDER)
  f32 = np.float32
  # Muted mid-tone backgrounds, so white and black items both stand out.
  gray = rng.uniform(120, 190, (n, 1))
  tint = rng.uniform(-18, 18, (n, 3))
  return Placement(
      center_x=rng.uniform(-0.12, 0.12, n).astype(f32),
      center_y=rng.uniform(-0.12, 0.12, n).astype(f32),
      scale=rng.uniform(0.72, 0.95, n).astype(f32),
      angle=rng.uniform(0, np.pi, n).astype(f32),
      phase=rng.uniform(0, 1, n).astype(f32),
      background=(gray + tint).astype(f32),
      tilt=rng.uniform(-20, 20, (n, 2)).astype(f32))


def _box(u, v, u0, u1, v0, v1):
  return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _dress(u, v):
  a = np.abs(u)
  bodice = (a < 0.22) & (v >= -0.85) & (v < -0.2)
  flare = (v >= -0.2) & (v <= 0.9) & (a < 0.22 + 0.45 * (v + 0.2) / 1.1)
  return bodice | flare


def _shirt(u, v):
  a = np.abs(u)
  body = (a < 0.42) & (v >= -0.65) & (v <= 0.9)
  shoulders = (a < 0.8) & (v >= -0.65) & (v <= -0.35)
  sleeves = (a >= 0.55) & (a <= 0.8) & (v >= -0.35) & (v <= 0.55)
  collar = (v < -0.3) & (a < 0.14 * (1 - (v + 0.65) / 0.35))  # V-neck cut-out
  return (body | shoulders | sleeves) & ~collar


def _tshirt(u, v):
  a = np.abs(u)
  body = (a < 0.45) & (v >= -0.6) & (v <= 0.85)
  sleeves = (a < 0.85) & (v >= -0.6) & (v <= -0.25 - 0.3 * (a - 0.45))
  neck = u**2 + (v + 0.6)**2 < 0.2**2
  return (body | sleeves) & ~neck


def _trousers(u, v):
  a = np.abs(u)
  waist = (a < 0.45) & (v >= -0.9) & (v < -0.4)
  legs = (a >= 0.06) & (a < 0.45 + 0.05 * (v + 0.4)) & (v >= -0.4) & (v <= 0.95)
  return waist | legs


def _skirt(u, v):
  return (v >= -0.45) & (v <= 0.6) & (np.abs(u) < 0.3 + 0.45 * (v + 0.45) / 1.05)


def _bag(u, v):
  body = _box(u, v, -0.7, 0.7, -0.15, 0.75)
  r2 = u**2 + (v + 0.15)**2
  handle = (r2 > 0.3**2) & (r2 < 0.43**2) & (v < -0.15)
  return body | handle


def _shoes(u, v):
  toe = ((u - 0.45) / 0.42)**2 + ((v - 0.38) / 0.3)**2 < 1
  foot = _box(u, v, -0.85, 0.45, 0.08, 0.62)
  ankle = _box(u, v, -0.85, -0.2, -0.5, 0.62)
  return toe | foot | ankle


def _hat(u, v):
  crown = (u**2 + (v - 0.25)**2 < 0.5**2) & (v < 0.25)
  brim = (u / 0.95)**2 + ((v - 0.25) / 0.14)**2 < 1
  return crown | brim


def _jacket(u, v):
  a = np.abs(u)
  body = (a < 0.5) & (v >= -0.7) & (v <= 0.95)
  sleeves = (a >= 0.5) & (a <= 0.92) & (v >= -0.7 + 0.5 * (a - 0.5)) & (v <= 0.75)
  hood = u**2 + (v + 0.72)**2 < 0.3**2
  opening = (a < 0.05) & (v > -0.45)  # the open front / zip line
  return (body | sleeves | hood) & ~opening


def _scarf(u, v):
  band = (np.abs(v - 0.35 * np.sin(2.2 * u)) < 0.18) & (np.abs(u) < 0.95)
  tail = _box(u, v, 0.45, 0.75, 0.0, 0.9)
  return band | tail


def _sofa(u, v):
  a = np.abs(u)
  back = (a < 0.88) & (v >= -0.45) & (v < 0.1)
  seat = (a < 0.95) & (v >= 0.1) & (v <= 0.5)
  arms = (a >= 0.72) & (a <= 0.98) & (v >= -0.15) & (v <= 0.5)
  legs = (a >= 0.75) & (a <= 0.88) & (v > 0.5) & (v <= 0.68)
  return back | seat | arms | legs


def _mug(u, v):
  body = _box(u, v, -0.6, 0.3, -0.55, 0.7)
  r2 = (u - 0.33)**2 + (v - 0.05)**2
  handle = (r2 > 0.17**2) & (r2 < 0.31**2) & (u > 0.3)
  return body | handle


# One silhouette per category, in vocab.CATEGORIES order.
SILHOUETTES = {'dress': _dress, 'shirt': _shirt, 't-shirt': _tshirt, 'trousers': _trousers,
               'skirt': _skirt, 'bag': _bag, 'shoes': _shoes, 'hat': _hat, 'jacket': _jacket,
               'scarf': _scarf, 'sofa': _sofa, 'mug': _mug}
assert tuple(SILHOUETTES) == vocab.CATEGORY_NAMES


def _stripes(ru, rv, cu, cv):
  del rv, cu, cv
  return np.sin(2 * np.pi * ru / 0.45) > 0.4


def _dots(ru, rv, cu, cv):
  del ru, rv
  return cu**2 + cv**2 < 0.22**2


def _floral(ru, rv, cu, cv):
  del ru, rv
  return np.sqrt(cu**2 + cv**2) < 0.12 + 0.25 * np.abs(np.cos(2.5 * np.arctan2(cv, cu)))


def _checks(ru, rv, cu, cv):
  del cu, cv
  return (np.floor(ru / 0.4) + np.floor(rv / 0.4)) % 2 == 0


# Where each pattern paints its secondary tone; 'plain' paints nowhere.
PATTERNS = {'stripes': _stripes, 'dots': _dots, 'floral': _floral, 'checks': _checks}


def _pattern_mask(pattern, u, v, angle, phase):
  """bool [B, S, S]: True where the pattern's secondary tone is painted.

  (ru, rv) are the object coordinates rotated by `angle` and shifted by `phase` (stripes,
  checks); (cu, cv) the position inside a 0.5-unit grid cell (dots, flowers).
  """
  out = np.zeros(np.broadcast_shapes(u.shape, v.shape), bool)
  for name, fn in PATTERNS.items():
    sel = np.flatnonzero(pattern == vocab.PATTERN_NAMES.index(name))
    if not sel.size:
      continue  # computed per pattern group: trigonometry only where it is needed
    us, vs = u[sel], v[sel]
    cos, sin = np.cos(angle[sel])[:, None, None], np.sin(angle[sel])[:, None, None]
    ph = phase[sel][:, None, None]
    ru, rv = cos * us + sin * vs + ph, -sin * us + cos * vs + ph
    cu, cv = (us / 0.5 + ph) % 1.0 - 0.5, (vs / 0.5 + ph) % 1.0 - 0.5
    out[sel] = fn(ru, rv, cu, cv)
  return out


def render_batch(category: np.ndarray, color: np.ndarray, pattern: np.ndarray,
                 place: Placement, size: int, rng: np.random.Generator) -> np.ndarray:
  """Renders B pictures.

  Args:
    category, color, pattern: int [B] codes (vocab tables).
    place: Placement whose arrays have length B.
    size: square side S in pixels.
    rng: source of the pixel noise.
  Returns:
    uint8 [B, S, S, 3].
  """
  axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  y, x = axis[None, :, None], axis[None, None, :]
  u = (x - place.center_x[:, None, None]) / place.scale[:, None, None]
  v = (y - place.center_y[:, None, None]) / place.scale[:, None, None]
  b = len(category)
  mask = np.zeros((b, size, size), bool)
  for code, name in enumerate(vocab.CATEGORY_NAMES):
    sel = np.flatnonzero(category == code)
    if sel.size:
      mask[sel] = SILHOUETTES[name](u[sel], v[sel])

  main = vocab.COLOR_RGB[color]                                      # [B, 3]
  # The secondary tone stays close to the main color, so the color remains the dominant hue.
  light = main @ np.array([0.299, 0.587, 0.114], np.float32) > 128
  contrast = np.where(light[:, None], 30.0, 235.0).astype(np.float32)
  second = 0.45 * main + 0.55 * contrast
  paint = _pattern_mask(pattern, u, v, place.angle, place.phase)[..., None]
  obj = np.where(paint, second[:, None, None], main[:, None, None])
  obj = obj * (1.0 - 0.12 * np.clip(v, -1, 1))[..., None]            # soft top light

  bg = (place.background[:, None, None]
        + place.tilt[:, 0, None, None, None] * x[..., None]
        + place.tilt[:, 1, None, None, None] * y[..., None])
  img = np.where(mask[..., None], obj, bg)
  img = img + rng.normal(0.0, 5.0, img.shape).astype(np.float32)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_items(config, cat, items: np.ndarray, place: Placement) -> np.ndarray:
  """uint8 [len(items), S, S, 3] for catalog indices `items`, S = config.images.size.

  The pixel noise comes from a stream keyed by the first item index, so rendering an item in
  the same chunk always gives the same pixels.
  """
  rng = catalog_lib.rng_for(config.seed, catalog_lib.STREAM_RENDER, 1,
                            int(items[0]) if len(items) else 0)
  sub = Placement(*(getattr(place, f.name)[items] for f in dataclasses.fields(Placement)))
  return render_batch(cat.category[items], cat.color[items], cat.pattern[items], sub,
                      config.images.size, rng)
