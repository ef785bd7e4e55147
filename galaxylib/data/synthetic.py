"""Procedural Galaxy10 DECaLS look-alikes, so the kit can train, test and demo offline.

Each image is drawn from its own child of ``np.random.SeedSequence(seed)``: the same seed
gives byte-identical images on the same platform, and image ``i`` does not depend on how
many images come before it.

Rendering happens in linear flux in units of the sky noise (sigma = 1), with the three
channels standing in for DECaLS z, r, g (shown as R, G, B). Every image then goes through
the same PSF blur, sky noise, Lupton asinh stretch and JPEG round trip, whatever its class,
so that the classes differ by morphology and stellar colour only, never by the pipeline.
"""

from __future__ import annotations

import io
import math
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, special

from galaxylib.classes import CLASS_NAMES, NUM_CLASSES

__all__ = ["render_galaxy", "make_synthetic_arrays", "write_synthetic_h5", "PIXEL_SCALE_ARCSEC"]

IMAGE_SIZE = 256  # Galaxy10 DECaLS cutouts are 256 x 256
PIXEL_SCALE_ARCSEC = 0.262  # DECaLS native pixel scale, as in the real file's ``pxscale``
GENERATOR_NAME = "galaxylib.data.synthetic"

# Stellar colours as one index c, shown as (z, r, g) = (1 + c, 1, 1 - c): measured on DECaLS
# cutouts, old populations sit near c = +0.25 (yellow-orange), disks near -0.1 (bluish
# white), star-forming knots near -0.3 (blue), and r stays between the other two.
_OLD = 0.25
_DISK = -0.1
_THICK = 0.08
_BAR = 0.15
_YOUNG = -0.22
_DUST = (0.6, 0.8, 1.0)  # dust dims g more than z, so lanes look red-brown
_STAR_INDICES = np.array([0.55, 0.5, 0.4, 0.3, 0.2, 0.05, -0.2])  # red M dwarfs dominate; few hot blue stars


# --------------------------------------------------------------------------- scene


@dataclass
class _Scene:
    """Everything one render shares, so component painters stay small."""

    rng: np.random.Generator
    size: int
    field_scale: float  # lengths are tuned for 256 px cutouts and scale with the cutout
    scale: float  # the target galaxy's lengths: field_scale times a random zoom
    cx: float
    cy: float
    psf: float
    tint: np.ndarray  # per-image calibration wobble, shared by every source
    sharp: np.ndarray  # light that only the PSF blurs
    diffuse: np.ndarray  # tidal debris and big clumps, blurred further
    diffuse_sigma: float
    used_diffuse: bool = False

    def colour(self, index: float, spread: float = 0.05) -> np.ndarray:
        """Jittered, mean-1 colour: stellar populations vary, so no class has a fixed hue."""
        c = index + self.rng.normal(0.0, spread)
        rgb = np.array([1.0 + c, 1.0, 1.0 - c]) * np.exp(self.rng.normal(0.0, 0.02, 3))
        return (rgb / rgb.mean()).astype(np.float32)

    def paint(self, lum: np.ndarray, flux: float, colour: np.ndarray, diffuse: bool = False) -> None:
        """Add a luminance map scaled to ``flux``; normalising here keeps bulge/disk ratios meaningful."""
        total = float(lum.sum())
        if total <= 0 or flux <= 0:
            return
        target = self.diffuse if diffuse else self.sharp
        target += (lum * np.float32(flux / total))[..., None] * colour
        self.used_diffuse |= diffuse

    def offsets(self, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
        x, y = _grid(self.size)
        return x - np.float32(cx), y - np.float32(cy)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, cached because every component needs them."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ------------------------------------------------------------------------ geometry


def _project(dx: np.ndarray, dy: np.ndarray, pa: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Image offsets to face-on disk coordinates (u along the major axis): inclines any pattern."""
    c, s = math.cos(pa), math.sin(pa)
    u = dx * np.float32(c) + dy * np.float32(s)
    v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(1.0 / q)
    return u, v


def _unproject(
    u: np.ndarray, v: np.ndarray, pa: float, q: float, cx: float, cy: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_project`, for point sources placed in the face-on frame."""
    c, s = math.cos(pa), math.sin(pa)
    v = v * q
    return cx + u * c - v * s, cy + u * s + v * c


def _sersic(r: np.ndarray, re: float, n: float) -> np.ndarray:
    b = 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)
    return np.exp(np.float32(-b) * (np.power(r * np.float32(1.0 / re), np.float32(1.0 / n)) - 1.0))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sech2(t: np.ndarray) -> np.ndarray:
    """sech^2 without cosh overflow far from the mid-plane."""
    e = np.exp(-2.0 * np.abs(t))
    return 4.0 * e / (1.0 + e) ** 2


def _splat(layer: np.ndarray, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, colours: np.ndarray) -> None:
    """Bilinear point deposits: sub-pixel positions keep stars and knots PSF-shaped after blurring."""
    h, w = layer.shape[:2]
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    fx, fy = xs - x0, ys - y0
    colours = np.broadcast_to(colours, (len(xs), 3))
    idx, wts, cols = [], [], []
    for ox, oy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx.append((yi * w + xi)[ok])
        wts.append((weights * wt)[ok])
        cols.append(colours[ok])
    flat_idx, flat_w, flat_c = np.concatenate(idx), np.concatenate(wts), np.concatenate(cols)
    for ch in range(3):
        deposit = np.bincount(flat_idx, flat_w * flat_c[:, ch], minlength=h * w)
        layer[..., ch] += deposit.reshape(h, w).astype(np.float32)


# ---------------------------------------------------------------------- components


def _add_sersic(
    s: _Scene,
    cx: float,
    cy: float,
    re: float,
    n: float,
    q: float,
    pa: float,
    flux: float,
    colour: np.ndarray,
    lopsided: float = 0.0,
    lop_angle: float = 0.0,
) -> None:
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, q)
    r = np.hypot(u, v)
    lum = _sersic(r, re, n)
    if lopsided:
        lum *= 1.0 + lopsided * (u * math.cos(lop_angle) + v * math.sin(lop_angle)) / (r + re)
    s.paint(lum, flux, colour)


@dataclass
class _Arms:
    """A logarithmic spiral pattern; pitch is what separates tight from loose spirals."""

    m: int
    pitch_deg: float
    phase: float
    r_start: float
    sharpness: float
    fraction: float  # share of the disk light in the arms
    knot_fraction: float  # share of the disk light in HII-region knots
    knots: int


def _add_spiral_disk(s: _Scene, cx: float, cy: float, h: float, q: float, pa: float, flux: float, arms: _Arms) -> None:
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, q)
    r = np.hypot(u, v) + np.float32(1e-3)
    theta = np.arctan2(v, u)
    smooth = np.exp(-r / np.float32(h))
    s.paint(smooth, flux * (1.0 - arms.fraction - arms.knot_fraction), s.colour(_DISK))
    tan_p = math.tan(math.radians(arms.pitch_deg))
    phi = theta - np.log(r / np.float32(arms.r_start)) / np.float32(tan_p) - np.float32(arms.phase)
    wave = (0.5 + 0.5 * np.cos(np.float32(arms.m) * phi)) ** np.float32(arms.sharpness)
    taper = _smoothstep((r - 0.6 * arms.r_start) / (0.5 * arms.r_start + 1.0))
    arm_lum = np.exp(-r / np.float32(1.15 * h)) * wave * taper
    s.paint(arm_lum, flux * arms.fraction, s.colour(-0.17))
    if arms.knots and arms.knot_fraction > 0:
        _add_arm_knots(s, cx, cy, h, q, pa, flux * arms.knot_fraction, arms, tan_p)


def _add_arm_knots(
    s: _Scene, cx: float, cy: float, h: float, q: float, pa: float, flux: float, arms: _Arms, tan_p: float
) -> None:
    """Star-forming knots strung along the arms: the clumpy look of late-type spirals."""
    rng = s.rng
    r = arms.r_start + h * rng.gamma(2.0, 0.8, arms.knots)
    arm = rng.integers(0, arms.m, arms.knots)
    theta = arms.phase + np.log(r / arms.r_start) * (1.0 / tan_p) + arm * (2 * math.pi / arms.m)
    theta = theta + rng.normal(0.0, 0.12, arms.knots)
    r = r * np.exp(rng.normal(0.0, 0.05, arms.knots))
    xs, ys = _unproject(r * np.cos(theta), r * np.sin(theta), pa, q, cx, cy)
    w = rng.lognormal(0.0, 0.7, arms.knots)
    w *= flux / w.sum()
    _splat(s.sharp, xs, ys, w, s.colour(_YOUNG, 0.1))


def _add_bar(
    s: _Scene,
    cx: float,
    cy: float,
    length: float,
    axis_ratio: float,
    bar_angle: float,
    q: float,
    pa: float,
    flux: float,
) -> None:
    """Soft-ended bar drawn in the disk plane, so it foreshortens with the disk."""
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, q)
    c, sn = math.cos(bar_angle), math.sin(bar_angle)
    ub = u * np.float32(c) + v * np.float32(sn)
    vb = v * np.float32(c) - u * np.float32(sn)
    m2 = (ub / np.float32(length)) ** 2 + (vb / np.float32(length * axis_ratio)) ** 2
    s.paint(np.exp(-2.0 * m2**1.5), flux, s.colour(_BAR))


def _add_ring(s: _Scene, cx: float, cy: float, radius: float, width: float, q: float, pa: float, flux: float) -> None:
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, q)
    r = np.hypot(u, v)
    s.paint(np.exp(-0.5 * ((r - radius) / np.float32(width)) ** 2), flux, s.colour(_DISK))


def _add_edge_on_disk(
    s: _Scene, cx: float, cy: float, h: float, z0: float, pa: float, flux: float, colour: np.ndarray, warp: float = 0.0
) -> None:
    """Exponential disk seen exactly edge-on: K1 along the plane, sech^2 across it."""
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, 1.0)
    a = np.abs(u) / np.float32(h) + np.float32(1e-3)
    radial = a * special.k1e(a) * np.exp(-a)
    radial *= 1.0 / (1.0 + np.exp((np.abs(u) - np.float32(4.5 * h)) / np.float32(0.4 * h)))
    if warp:
        v = v - np.float32(warp * h) * np.sign(u) * (np.clip(np.abs(u) / np.float32(h) - 1.5, 0.0, None) / 3.0) ** 2
    s.paint(radial * _sech2(v / np.float32(z0)), flux, colour)


def _apply_dust_lane(
    s: _Scene, cx: float, cy: float, h: float, width: float, pa: float, depth: float, offset: float
) -> None:
    """Dims the galaxy light painted so far, more in g than z: lanes come out red-brown."""
    dx, dy = s.offsets(cx, cy)
    u, v = _project(dx, dy, pa, 1.0)
    lane = np.exp(-0.5 * ((v - np.float32(offset)) / np.float32(width)) ** 2)
    lane *= np.exp(-np.abs(u) / np.float32(2.5 * h))
    s.sharp *= 1.0 - np.float32(depth) * lane[..., None] * np.asarray(_DUST, np.float32)


def _tail_points(
    s: _Scene,
    x0: float,
    y0: float,
    angle: float,
    length: float,
    curl: float,
    width: float,
    n: int = 400,
    start: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points along a curling stream; fading and widening outwards like tidal tails."""
    rng = s.rng
    t = np.sqrt(rng.uniform(start**2, 1.0, n))
    ang = angle + curl * t
    r = length * t
    spread = width * (0.4 + t)
    xs = x0 + r * np.cos(ang) + rng.normal(0.0, 1.0, n) * spread
    ys = y0 + r * np.sin(ang) + rng.normal(0.0, 1.0, n) * spread
    return xs, ys, np.exp(-1.5 * t)


def _add_tail(
    s: _Scene,
    x0: float,
    y0: float,
    angle: float,
    length: float,
    curl: float,
    width: float,
    flux: float,
    colour: np.ndarray,
) -> None:
    xs, ys, w = _tail_points(s, x0, y0, angle, length, curl, width, start=0.15)
    _splat(s.diffuse, xs, ys, w * (flux / w.sum()), colour)
    s.used_diffuse = True


def _add_shells(s: _Scene, cx: float, cy: float, re: float, flux: float, colour: np.ndarray) -> None:
    """Faint arcs on alternating sides: the fossil record of a swallowed companion."""
    rng = s.rng
    dx, dy = s.offsets(cx, cy)
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    axis = rng.uniform(0, 2 * math.pi)
    radius = re * rng.uniform(1.4, 2.2)
    for k in range(int(rng.integers(2, 5))):
        half = rng.uniform(0.5, 1.1)
        arc = np.clip((np.cos(theta - np.float32(axis + math.pi * k)) - math.cos(half)) / (1 - math.cos(half)), 0, 1)
        shell = np.exp(-0.5 * ((r - np.float32(radius)) / np.float32(1.5 * s.scale + 0.08 * radius)) ** 2) * arc
        s.paint(shell, flux * rng.uniform(0.5, 1.0) / (k + 1), colour)
        radius *= rng.uniform(1.3, 1.7)


# ------------------------------------------------------------------ class painters


def _paint_smooth(
    s: _Scene, q_range: tuple[float, float], n_range: tuple[float, float], re_range: tuple[float, float]
) -> None:
    """Ellipticals and lenticulars: ellipticity alone separates Galaxy10 classes 2, 3 and 4."""
    rng = s.rng
    re = _loguniform(rng, *re_range) * s.scale
    q = rng.uniform(*q_range)
    pa = rng.uniform(0, math.pi)
    halo = rng.uniform(0.1, 0.35) if rng.random() < 0.5 else 0.0
    _add_sersic(s, s.cx, s.cy, re, rng.uniform(*n_range), q, pa, 1.0 - halo, s.colour(_OLD))
    if halo:
        q_halo = min(1.0, q * rng.uniform(1.0, 1.12))
        _add_sersic(s, s.cx, s.cy, re * rng.uniform(1.5, 2.5), 1.0, q_halo, pa, halo, s.colour(0.18))


def _paint_round_smooth(s: _Scene) -> None:
    _paint_smooth(s, (0.88, 1.0), (2.0, 4.0), (5.0, 18.0))


def _paint_in_between_smooth(s: _Scene) -> None:
    _paint_smooth(s, (0.52, 0.74), (1.5, 4.0), (5.0, 18.0))


def _paint_cigar_smooth(s: _Scene) -> None:
    _paint_smooth(s, (0.18, 0.4), (1.0, 2.5), (5.0, 20.0))


def _disk_geometry(s: _Scene, h_range: tuple[float, float]) -> tuple[float, float, float]:
    """Scale length, projected axis ratio and position angle of a disk seen at random inclination."""
    rng = s.rng
    return _loguniform(rng, *h_range) * s.scale, rng.uniform(0.55, 1.0), rng.uniform(0, math.pi)


def _paint_bulge(s: _Scene, re: float, n: float, q: float, pa: float, flux: float) -> None:
    _add_sersic(s, s.cx, s.cy, re, n, min(1.0, q * 1.15 + 0.1), pa, flux, s.colour(_OLD))


def _paint_barred_spiral(s: _Scene) -> None:
    rng = s.rng
    h, q, pa = _disk_geometry(s, (8.0, 18.0))
    bt, bar_flux = rng.uniform(0.08, 0.25), rng.uniform(0.12, 0.22)
    bar_len = h * rng.uniform(1.2, 1.9)
    bar_angle = rng.uniform(0, math.pi)
    _paint_bulge(s, h * rng.uniform(0.15, 0.35), rng.uniform(1.5, 3.0), q, pa, bt)
    _add_bar(s, s.cx, s.cy, bar_len, rng.uniform(0.18, 0.3), bar_angle, q, pa, bar_flux)
    if rng.random() < 0.35:
        _add_ring(s, s.cx, s.cy, bar_len, 0.15 * bar_len + 1.0, q, pa, rng.uniform(0.04, 0.1))
    arms = _Arms(
        m=2,
        pitch_deg=rng.uniform(12, 30),
        phase=bar_angle,
        r_start=bar_len,
        sharpness=rng.uniform(1.2, 3.0),
        fraction=rng.uniform(0.2, 0.4),
        knot_fraction=rng.uniform(0.0, 0.06),
        knots=int(rng.integers(5, 30)),
    )
    _add_spiral_disk(s, s.cx, s.cy, h, q, pa, 1.0 - bt - bar_flux, arms)


def _paint_tight_spiral(s: _Scene) -> None:
    rng = s.rng
    h, q, pa = _disk_geometry(s, (8.0, 18.0))
    bt = rng.uniform(0.2, 0.45)
    _paint_bulge(s, h * rng.uniform(0.25, 0.5), rng.uniform(1.5, 3.5), q, pa, bt)
    arms = _Arms(
        m=int(rng.choice([2, 2, 2, 3])),
        pitch_deg=rng.uniform(7, 13),
        phase=rng.uniform(0, 2 * math.pi),
        r_start=h * rng.uniform(0.4, 0.8),
        sharpness=rng.uniform(1.2, 3.5),
        fraction=rng.uniform(0.2, 0.4),
        knot_fraction=rng.uniform(0.0, 0.04),
        knots=int(rng.integers(0, 20)),
    )
    _add_spiral_disk(s, s.cx, s.cy, h, q, pa, 1.0 - bt, arms)


def _paint_loose_spiral(s: _Scene) -> None:
    rng = s.rng
    h, q, pa = _disk_geometry(s, (8.0, 18.0))
    bt = rng.uniform(0.0, 0.12)
    if bt > 0.02:
        _paint_bulge(s, h * rng.uniform(0.12, 0.3), rng.uniform(1.0, 2.5), q, pa, bt)
    arms = _Arms(
        m=int(rng.choice([2, 2, 3, 4])),
        pitch_deg=rng.uniform(24, 38),
        phase=rng.uniform(0, 2 * math.pi),
        r_start=h * rng.uniform(0.3, 0.9),
        sharpness=rng.uniform(1.2, 3.0),
        fraction=rng.uniform(0.25, 0.45),
        knot_fraction=rng.uniform(0.04, 0.12),
        knots=int(rng.integers(15, 60)),
    )
    _add_spiral_disk(s, s.cx, s.cy, h, q, pa, 1.0 - bt, arms)


def _paint_edge_on(s: _Scene, with_bulge: bool) -> None:
    """Thin disks; a round bulge poking out of the plane is the only difference between 8 and 9."""
    rng = s.rng
    h = _loguniform(rng, 7.0, 22.0) * s.scale
    z0 = h * rng.uniform(0.09, 0.22)
    pa = rng.uniform(0, math.pi)
    warp = rng.uniform(-0.6, 0.6) if rng.random() < 0.25 else 0.0
    bt = rng.uniform(0.35, 0.65) if with_bulge else 0.0
    thick = rng.uniform(0.1, 0.25)
    _add_edge_on_disk(s, s.cx, s.cy, h, z0, pa, (1 - bt) * (1 - thick), s.colour(_DISK), warp)
    _add_edge_on_disk(s, s.cx, s.cy, h * 0.9, z0 * 2.5, pa, (1 - bt) * thick, s.colour(_THICK), warp)
    if with_bulge:
        re_b = max(h * rng.uniform(0.35, 0.7), 4.0 * z0)
        _add_sersic(s, s.cx, s.cy, re_b, rng.uniform(1.5, 3.0), rng.uniform(0.65, 1.0), pa, bt, s.colour(_OLD))
    depth = rng.uniform(0.4, 0.9) if with_bulge else rng.uniform(0.0, 0.4)
    _apply_dust_lane(s, s.cx, s.cy, h, z0 * rng.uniform(0.4, 0.8), pa, depth, rng.normal(0.0, 0.3 * z0))


def _paint_edge_on_without_bulge(s: _Scene) -> None:
    _paint_edge_on(s, with_bulge=False)


def _paint_edge_on_with_bulge(s: _Scene) -> None:
    _paint_edge_on(s, with_bulge=True)


def _paint_member(s: _Scene, cx: float, cy: float, flux: float, partner_angle: float) -> float:
    """One galaxy of an interacting group, pulled lopsided towards its partner; returns its size."""
    rng = s.rng
    kind = rng.choice(["elliptical", "disk", "spiral"], p=[0.4, 0.35, 0.25])
    re = _loguniform(rng, 4.0, 16.0) * s.scale
    pa = rng.uniform(0, math.pi)
    lop = rng.uniform(0.2, 0.7)
    if kind == "elliptical":
        _add_sersic(
            s, cx, cy, re, rng.uniform(1.5, 3.0), rng.uniform(0.6, 1.0), pa, flux, s.colour(_OLD), lop, partner_angle
        )
        return re
    q = rng.uniform(0.35, 1.0)
    bt = rng.uniform(0.1, 0.5)
    _add_sersic(s, cx, cy, re * 0.35, rng.uniform(1.0, 2.5), min(1.0, q + 0.3), pa, flux * bt, s.colour(_OLD))
    if kind == "disk":
        _add_sersic(s, cx, cy, re, 1.0, q, pa, flux * (1 - bt), s.colour(_DISK), lop, partner_angle)
    else:
        arms = _Arms(
            m=2,
            pitch_deg=rng.uniform(15, 35),
            phase=rng.uniform(0, 2 * math.pi),
            r_start=0.5 * re,
            sharpness=rng.uniform(1.5, 3.0),
            fraction=0.3,
            knot_fraction=0.1,
            knots=int(rng.integers(5, 25)),
        )
        _add_spiral_disk(s, cx, cy, re / 1.68, q, pa, flux * (1 - bt), arms)
    return re


def _paint_merging(s: _Scene) -> None:
    """Two or three overlapping galaxies with tails and bridges, light-weighted to the centre."""
    rng = s.rng
    n = 3 if rng.random() < 0.25 else 2
    fluxes = np.array([1.0] + list(rng.uniform(0.25, 1.0, n - 1)))
    fluxes /= fluxes.sum()
    sep = rng.uniform(14.0, 40.0) * s.scale
    axis = rng.uniform(0, 2 * math.pi)
    angles = [axis, axis + math.pi] + [axis + rng.uniform(0.6, 2.5) * rng.choice([-1, 1])]
    dists = [sep * fluxes[1], sep * fluxes[0]] + [sep * rng.uniform(0.8, 1.5)]
    pos = [(s.cx + d * math.cos(a), s.cy + d * math.sin(a)) for d, a in zip(dists[:n], angles[:n])]
    for i, ((x, y), f) in enumerate(zip(pos, fluxes)):
        other = pos[1] if i == 0 else pos[0]
        towards = math.atan2(other[1] - y, other[0] - x)
        re = _paint_member(s, x, y, f, towards)
        if rng.random() < 0.7:
            away = towards + math.pi + rng.normal(0.0, 0.7)
            _add_tail(
                s,
                x,
                y,
                away,
                rng.uniform(3.0, 7.0) * re + 10 * s.scale,
                rng.uniform(-1.3, 1.3),
                rng.uniform(1.5, 4.0) * s.scale,
                f * rng.uniform(0.04, 0.15),
                s.colour(-0.08, 0.08),
            )
    if rng.random() < 0.35:
        (x0, y0), (x1, y1) = pos[0], pos[1]
        ang = math.atan2(y1 - y0, x1 - x0)
        _add_tail(s, x0, y0, ang - 0.3, math.hypot(x1 - x0, y1 - y0), 0.6, 1.5 * s.scale, 0.06, s.colour(_DISK))
    if rng.random() < 0.4:
        _add_sersic(
            s,
            s.cx,
            s.cy,
            sep * rng.uniform(0.6, 1.2),
            1.0,
            rng.uniform(0.5, 1.0),
            rng.uniform(0, math.pi),
            rng.uniform(0.08, 0.2),
            s.colour(0.12),
        )


def _paint_disturbed(s: _Scene) -> None:
    """One lopsided or irregular system: clumps, warps, shells and plumes without a clear second body."""
    rng = s.rng
    kind = rng.choice(["irregular", "lopsided", "shells"], p=[0.4, 0.35, 0.25])
    pa = rng.uniform(0, math.pi)
    lop_angle = rng.uniform(0, 2 * math.pi)
    if kind == "shells":
        re = _loguniform(rng, 4.0, 16.0) * s.scale
        _add_sersic(
            s,
            s.cx,
            s.cy,
            re,
            rng.uniform(2.5, 4.0),
            rng.uniform(0.6, 1.0),
            pa,
            0.85,
            s.colour(_OLD),
            rng.uniform(0.0, 0.4),
            lop_angle,
        )
        _add_shells(s, s.cx, s.cy, re, rng.uniform(0.06, 0.15), s.colour(0.12))
        if rng.random() < 0.5:
            _add_tail(
                s,
                s.cx,
                s.cy,
                lop_angle,
                re * rng.uniform(4, 8),
                rng.uniform(-1.0, 1.0),
                2.0 * s.scale,
                0.06,
                s.colour(0.1),
            )
        return
    h = _loguniform(rng, 6.0, 14.0) * s.scale
    q = rng.uniform(0.35, 1.0)
    young = kind == "irregular"
    disk_colour = s.colour(-0.16 if young else _DISK)
    _add_sersic(s, s.cx, s.cy, h * 1.68, 1.0, q, pa, 0.45, disk_colour, rng.uniform(0.6, 0.95), lop_angle)
    off = h * rng.uniform(0.8, 1.5)
    _add_sersic(
        s,
        s.cx + off * math.cos(lop_angle),
        s.cy + off * math.sin(lop_angle),
        h * 2.2,
        1.0,
        q * rng.uniform(0.7, 1.2),
        pa + rng.normal(0, 0.4),
        0.3,
        disk_colour,
    )
    if not young:
        _add_sersic(s, s.cx, s.cy, h * 0.3, 2.0, min(1.0, q + 0.3), pa, 0.12, s.colour(_OLD))
        if rng.random() < 0.6:
            _add_tail(
                s,
                s.cx,
                s.cy,
                lop_angle + rng.normal(0, 0.5),
                h * rng.uniform(4, 8),
                rng.uniform(-1.5, 1.5),
                2.0 * s.scale,
                0.08,
                s.colour(_DISK),
            )
    _add_clumps(s, h, q, pa, 0.28 if young else 0.16)


def _add_clumps(s: _Scene, h: float, q: float, pa: float, flux: float) -> None:
    """Big star-forming complexes scattered off-centre: what makes irregulars look irregular."""
    rng = s.rng
    k = int(rng.integers(3, 10))
    r = h * rng.gamma(2.0, 0.7, k)
    t = rng.uniform(0, 2 * math.pi, k)
    xs, ys = _unproject(r * np.cos(t), r * np.sin(t), pa, q, s.cx, s.cy)
    w = rng.lognormal(0.0, 0.6, k)
    big = rng.random(k) < 0.7
    w *= flux / w.sum()
    w[~big] *= 0.4  # compact knots stay faint, or they read as foreground stars
    _splat(s.diffuse, xs[big], ys[big], w[big], s.colour(_YOUNG, 0.1))
    _splat(s.sharp, xs[~big], ys[~big], w[~big], s.colour(_YOUNG, 0.1))
    s.used_diffuse = True


_PAINTERS = (
    _paint_disturbed,
    _paint_merging,
    _paint_round_smooth,
    _paint_in_between_smooth,
    _paint_cigar_smooth,
    _paint_barred_spiral,
    _paint_tight_spiral,
    _paint_loose_spiral,
    _paint_edge_on_without_bulge,
    _paint_edge_on_with_bulge,
)
assert len(_PAINTERS) == NUM_CLASSES, "one painter per Galaxy10 class"


# -------------------------------------------------------------------- field + sky


def _channel_sum(x: np.ndarray) -> np.ndarray:
    """Sum over RGB; numpy reductions over a length-3 last axis are several times slower."""
    return x[..., 0] + x[..., 1] + x[..., 2]


def _half_light_level(s: _Scene) -> float:
    """Surface brightness of the isophote enclosing half the light, after the PSF.

    Normalising here rather than at the peak lets cuspy cores saturate, as in real cutouts,
    while disks and halos stay visible whatever the profile.
    """
    lum = ndimage.gaussian_filter(_channel_sum(s.sharp), s.psf)
    if s.used_diffuse:
        lum += ndimage.gaussian_filter(_channel_sum(s.diffuse), math.hypot(s.psf, s.diffuse_sigma))
    values = np.sort(lum[::2, ::2], axis=None)[::-1]
    cumulative = np.cumsum(values, dtype=np.float64)
    return float(values[np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _add_stars(s: _Scene, gain: float, soft: float) -> None:
    """Foreground stars; their blurred peaks span faint to saturated, independent of the galaxy class."""
    rng = s.rng
    n = int(rng.poisson(rng.uniform(6.0, 24.0) * s.field_scale**2)) + 1
    xs, ys = rng.uniform(0, s.size, n), rng.uniform(0, s.size, n)
    near = np.hypot(xs - s.cx, ys - s.cy) < 6 * s.field_scale  # over a nucleus it would fake a merger
    xs[near] += rng.choice([-1, 1], near.sum()) * 12 * s.field_scale
    # Drawn in display units, biased faint: faint stars far outnumber bright, saturated ones.
    shown = 8.0 + 300.0 * rng.random(n) ** 4.0
    peaks = np.minimum(soft * np.sinh(np.minimum(shown / (gain * soft), 30.0)), 3e4)
    index = _STAR_INDICES[rng.integers(0, len(_STAR_INDICES), n)] + rng.normal(0.0, 0.05, n)
    colours = np.stack([1.0 + index, np.ones(n), 1.0 - index], 1) * np.exp(rng.normal(0, 0.03, (n, 3)))
    colours = (colours / colours.sum(1, keepdims=True) * 3.0).astype(np.float32)
    _splat(s.sharp, xs, ys, peaks * 2 * math.pi * s.psf**2, colours)


def _add_background_galaxies(s: _Scene, target_level: float) -> None:
    """Small faint galaxies behind the target, and sometimes a bright unrelated neighbour, so that
    "two galaxies in the frame" alone never means a merger."""
    rng = s.rng
    for _ in range(int(rng.poisson(rng.uniform(3.0, 12.0) * s.field_scale**2))):
        gx, gy = rng.uniform(0, s.size, 2)
        if math.hypot(gx - s.cx, gy - s.cy) > 25 * s.field_scale:
            _add_field_galaxy(s, gx, gy, _loguniform(rng, 0.8, 4.0) * s.field_scale, _loguniform(rng, 3.0, 40.0))
    if rng.random() < 0.3:
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(50.0, 115.0) * s.field_scale
        _add_field_galaxy(
            s,
            s.cx + dist * math.cos(angle),
            s.cy + dist * math.sin(angle),
            _loguniform(rng, 2.0, 6.0) * s.field_scale,
            target_level * _loguniform(rng, 0.5, 4.0),
        )


def _add_field_galaxy(s: _Scene, gx: float, gy: float, re: float, peak: float) -> None:
    """One small galaxy painted in a window around it, to stay fast."""
    rng = s.rng
    x, y = _grid(s.size)
    half = int(min(8 * re, 40)) + 2
    win = (slice(max(int(gy) - half, 0), max(int(gy) + half, 0)), slice(max(int(gx) - half, 0), max(int(gx) + half, 0)))
    u, v = _project(x[win] - gx, y[win] - gy, rng.uniform(0, math.pi), rng.uniform(0.3, 1.0))
    lum = _sersic(np.hypot(u, v), re, rng.uniform(0.7, 3.0))
    colour = s.colour(0.3 if rng.random() < 0.6 else _DISK, 0.1)
    if lum.size:
        s.sharp[win] += (lum * np.float32(peak / lum.max()))[..., None] * colour


def _misregister(flux: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Sub-pixel offsets between bands, as between exposures: the colour fringes on real cores."""
    for ch in (0, 2):
        for axis, d in enumerate(np.clip(rng.normal(0.0, sigma, 2), -0.9, 0.9)):
            _shift_subpixel(flux[..., ch], float(d), axis)


def _shift_subpixel(a: np.ndarray, d: float, axis: int) -> None:
    """Linear-interpolated shift by |d| < 1 px in place, edge pixels held: no wrap-around at the border."""
    a = np.moveaxis(a, axis, 0)
    f = np.float32(abs(d))
    if d >= 0:
        a[1:] = (1 - f) * a[1:] + f * a[:-1]
    else:
        a[:-1] = (1 - f) * a[:-1] + f * a[1:]


def _asinh_softening(peak: float, span: float) -> float:
    """Softening a with a * asinh(peak / a) = span, so the core lands on the drawn display level."""
    lo, hi = 1e-3, 1e4
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if mid * math.asinh(peak / mid) < span else (lo, mid)
    return math.sqrt(lo * hi)


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise with pixel-scale correlation, like resampled, coadded survey images."""
    n = rng.standard_normal(shape, dtype=np.float32)
    a = rng.uniform(0.15, 0.45)
    kernel = np.array([a, 1.0, a]) / math.sqrt(1.0 + 2.0 * a * a)
    for axis in (0, 1):
        n = ndimage.correlate1d(n, kernel, axis=axis, mode="wrap")
    return n


def _stretch(x: np.ndarray, sky: np.ndarray, gain: float, soft: float) -> np.ndarray:
    """Lupton asinh on the mean channel, like the Legacy Surveys' ``sdss_rgb``: colours survive the stretch.

    Light above white spills into the other channels, so saturated cores go white rather than
    the cyan or magenta that a bare per-channel clip leaves.
    """
    t = _channel_sum(x) * np.float32(1.0 / (3.0 * soft))
    t = np.where(np.abs(t) < 1e-4, np.float32(1e-4), t)
    out = sky + x * (np.float32(gain) * np.arcsinh(t) / t)[..., None]
    brightest = np.maximum(np.maximum(out[..., 0], out[..., 1]), out[..., 2])
    return out + np.float32(0.6) * np.clip(brightest - 255.0, 0.0, None)[..., None]


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Galaxy10 and the real test sets are JPEG-compressed; the model should see the same blocking."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


# ------------------------------------------------------------------------ public


@dataclass(frozen=True)
class _Survey:
    """How the sky is imaged and displayed, drawn before anything is painted."""

    psf: float  # Gaussian sigma in px at 256 px
    sky_level: float  # output units
    noise_gain: float  # output units per sky sigma


def _draw_survey(rng: np.random.Generator) -> _Survey:
    """Mostly deep, sharp DECaLS-like imaging (grey, grainy sky); sometimes shallow SDSS-like
    imaging (near-black smooth sky, worse seeing relative to the galaxy), so a model meets both."""
    if rng.random() < 0.7:
        return _Survey(rng.uniform(1.0, 2.5), rng.uniform(24.0, 40.0), rng.uniform(5.0, 15.0))
    return _Survey(rng.uniform(1.5, 3.5), rng.uniform(2.0, 14.0), rng.uniform(1.5, 5.0))


def _calibration_tint(rng: np.random.Generator) -> np.ndarray:
    """Zero-point scatter between bands; kept along the colour sequence so r stays between z and g."""
    t = rng.normal(0.0, 0.04)
    return (np.array([1.0 + t, 1.0, 1.0 - t]) * np.exp(rng.normal(0.0, 0.01, 3))).astype(np.float32)


def render_galaxy(class_index: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One synthetic cutout of ``class_index`` as uint8 (size, size, 3) RGB.

    Everything random comes from ``rng``, so a seeded generator reproduces the image.
    """
    if not 0 <= int(class_index) < NUM_CLASSES:
        raise ValueError(f"Galaxy10 has classes 0..{NUM_CLASSES - 1}; got {class_index}")
    return _render(_PAINTERS[int(class_index)], rng, size)


def render_star_field(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The same survey, sky, noise and foreground stars as a cutout, with no galaxy at all:
    an input the classifier should flag as out of distribution."""
    return _render(None, rng, size)


def _render(painter, rng: np.random.Generator, size: int) -> np.ndarray:
    if size < 32:
        raise ValueError(f"size must be at least 32 px; got {size}")
    scale = size / IMAGE_SIZE
    centre = (size - 1) / 2.0
    survey = _draw_survey(rng)
    jitter = np.clip(rng.normal(0.0, 2.0 * scale, 2), -6 * scale, 6 * scale)
    s = _Scene(
        rng=rng,
        size=size,
        field_scale=scale,
        scale=scale * _loguniform(rng, 1.0, 1.6),
        cx=centre + jitter[0],
        cy=centre + jitter[1],
        psf=survey.psf * scale,
        tint=_calibration_tint(rng),
        sharp=np.zeros((size, size, 3), np.float32),
        diffuse=np.zeros((size, size, 3), np.float32),
        diffuse_sigma=rng.uniform(1.5, 3.0) * scale,
    )
    if painter is not None:  # a star field keeps its scene empty: zero flux stays zero when scaled
        painter(s)

    # Display: sky level and noise gain in output units, flux in sky sigmas. The half-light
    # isophote's display level is drawn the same way for every class, so brightness cannot
    # leak the label.
    sky_level, noise_gain = survey.sky_level, survey.noise_gain
    half_display = rng.uniform(130.0, 250.0) / noise_gain
    half_flux = max(_loguniform(rng, 30.0, 400.0), 1.3 * half_display)
    soft = _asinh_softening(half_flux, half_display)
    norm = np.float32(half_flux / max(_half_light_level(s), 1e-12))
    s.sharp *= norm
    s.diffuse *= norm

    if painter is not None:
        _add_background_galaxies(s, half_flux)
    _add_stars(s, noise_gain, soft)
    flux = ndimage.gaussian_filter(s.sharp, (s.psf, s.psf, 0), truncate=5.0)
    if s.used_diffuse:
        sd = math.hypot(s.psf, s.diffuse_sigma)
        flux += ndimage.gaussian_filter(s.diffuse, (sd, sd, 0))
    flux *= s.tint
    _misregister(flux, rng, 0.3 * scale)

    shot = np.float32(1.0 / rng.uniform(2.0, 10.0))
    sigma = np.sqrt(1.0 + np.clip(flux, 0.0, None) * shot)
    band_noise = np.exp(rng.normal(0.0, 0.12, 3)).astype(np.float32)
    flux += _correlated_noise(rng, flux.shape) * sigma * band_noise

    sky = (sky_level + rng.normal(0.0, 1.5, 3)).astype(np.float32)
    img = np.clip(_stretch(flux, sky, noise_gain, soft), 0, 255)
    return _jpeg_roundtrip(np.rint(img).astype(np.uint8), int(rng.integers(75, 96)))


def _plan(n_per_class: int, seed: int) -> tuple[np.ndarray, np.random.SeedSequence, list[np.random.SeedSequence]]:
    """Labels in a seeded shuffle, plus one independent seed per image and one for metadata."""
    if int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1; got {n_per_class}")
    n = NUM_CLASSES * int(n_per_class)
    order_seq, meta_seq, *image_seqs = np.random.SeedSequence(int(seed)).spawn(n + 2)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), int(n_per_class))
    return labels[np.random.default_rng(order_seq).permutation(n)], meta_seq, image_seqs


def make_synthetic_arrays(n_per_class: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Balanced, shuffled images (N, size, size, 3) and labels (N,), both uint8."""
    labels, _, seqs = _plan(n_per_class, seed)
    images = np.empty((len(labels), size, size, 3), np.uint8)
    for i, (label, seq) in enumerate(zip(labels, seqs)):
        images[i] = render_galaxy(int(label), np.random.default_rng(seq), size)
    return images, labels


def _metadata(meta_seq: np.random.SeedSequence, n: int) -> dict[str, np.ndarray]:
    """Plausible sky positions in the DECaLS footprint and low redshifts; nothing reads them as truth."""
    rng = np.random.default_rng(meta_seq)
    return {
        "ra": rng.uniform(0.0, 360.0, n),
        "dec": np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-20)), math.sin(math.radians(35)), n))),
        "redshift": rng.gamma(4.0, 0.015, n),
        "pxscale": np.full(n, PIXEL_SCALE_ARCSEC, np.float64),
    }


def _render_one(job: tuple[int, np.random.SeedSequence]) -> np.ndarray:
    label, seq = job
    return render_galaxy(int(label), np.random.default_rng(seq), IMAGE_SIZE)


def write_synthetic_h5(
    path: str | os.PathLike[str],
    n_per_class: int = 100,
    seed: int = 0,
    show_progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a stand-in for ``Galaxy10_DECals.h5`` with the real file's keys, dtypes and shapes.

    Rendering is spread over ``workers`` processes (default: every core); each image has
    its own seed, so the file is the same whatever the worker count. Written to a temporary
    file beside ``path`` and renamed at the end, so an interrupted run never leaves a
    half-written file where a loader would trust it.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import h5py
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels, meta_seq, seqs = _plan(n_per_class, seed)
    n = len(labels)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # same folder: the rename is atomic
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["synthetic"] = True
            f.attrs["generator"] = GENERATOR_NAME
            f.attrs["seed"] = int(seed)
            f.attrs["n_per_class"] = int(n_per_class)
            f.attrs["class_names"] = list(CLASS_NAMES)
            images = f.create_dataset(
                "images",
                (n, IMAGE_SIZE, IMAGE_SIZE, 3),
                np.uint8,
                chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3),
                compression="gzip",
                compression_opts=1,
            )
            f.create_dataset("ans", data=labels, dtype=np.uint8)
            for key, values in _metadata(meta_seq, n).items():
                f.create_dataset(key, data=values, dtype=np.float64)
            jobs = list(zip(labels.tolist(), seqs))
            workers = max(1, min(int(workers or os.cpu_count() or 1), n))
            bar = tqdm(total=n, desc="synthetic galaxies", unit="img", disable=not show_progress)
            if workers == 1:
                rendered = map(_render_one, jobs)
                pool = None
            else:  # spawn: safe even in a process that has already started TensorFlow's threads
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                rendered = pool.map(_render_one, jobs, chunksize=8)
            try:
                for i, image in enumerate(rendered):
                    images[i] = image
                    bar.update()
            finally:
                bar.close()
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
