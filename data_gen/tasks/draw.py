"""Vectorised numpy drawing primitives for the built-in tasks.

Images are float32 arrays [N, H, W, 3] in [0, 1] while drawing; `to_uint8` turns them into the task format
uint8 [N, 3, H, W]. Geometry is in normalised coordinates (the image spans [0, 1] on both axes), so the random
draws of a task do not depend on the image size. Shapes are signed distance functions (negative inside), turned
into anti-aliased coverage about one pixel wide.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "plus", "ring", "diamond")


def balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """`n` labels in random order whose class counts differ by at most one."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def uniform_in_bin(rng: np.random.Generator, labels: np.ndarray, lo: float, hi: float, num_bins: int) -> np.ndarray:
    """A value drawn uniformly inside bin `labels` of [lo, hi) split into `num_bins` equal bins."""
    width = (hi - lo) / num_bins
    return (lo + (labels + rng.random(labels.shape)) * width).astype(np.float32)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each [1, size, size], in [0, 1]."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return t[None, :, None].repeat(size, 2), t[None, None, :].repeat(size, 1)


def local(yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray,
          angle: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) [N, H, W] relative to per-image centres, rotated by `angle` (radians)."""
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    c = np.cos(np.asarray(angle, np.float32))[..., None, None]
    s = np.sin(np.asarray(angle, np.float32))[..., None, None]
    return c * dx + s * dy, -s * dx + c * dy


def window(cy: np.ndarray, cx: np.ndarray, half: float, size: int) -> tuple[np.ndarray, ...]:
    """A square pixel window per image around (cy, cx) that covers `half` (normalised) plus a pixel each side.

    Returns (iy [N, w], ix [N, w], yy [N, w, 1], xx [N, 1, w]): pixel indices and their centre coordinates.
    Drawing a small object into its window instead of the whole image saves most of the work.
    """
    w = min(size, int(np.ceil(2 * half * size)) + 2)
    y0 = np.clip(np.floor(cy * size).astype(np.int64) - w // 2, 0, size - w)
    x0 = np.clip(np.floor(cx * size).astype(np.int64) - w // 2, 0, size - w)
    iy, ix = y0[:, None] + np.arange(w), x0[:, None] + np.arange(w)
    return iy, ix, ((iy + 0.5) / size).astype(np.float32)[:, :, None], ((ix + 0.5) / size).astype(np.float32)[:, None, :]


def paint_window(img: np.ndarray, iy: np.ndarray, ix: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """`paint` restricted to per-image windows (from `window`); alpha is [N, w, w]."""
    n = np.arange(len(img))[:, None, None]
    rows, cols = iy[:, :, None], ix[:, None, :]
    patch = img[n, rows, cols]
    paint(patch, alpha, colour)
    img[n, rows, cols] = patch


def sdf(kind: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (approximate outside polygons) of a shape of size `r` [N] centred at u = v = 0."""
    r = np.asarray(r, np.float32)[:, None, None]
    au, av = np.abs(u), np.abs(v)
    if kind == "circle":
        return np.sqrt(u * u + v * v) - r
    if kind == "square":
        return np.maximum(au, av) - 0.85 * r
    if kind == "diamond":
        return (au + av) * np.float32(0.7071) - 0.8 * r
    if kind == "triangle":
        d = v - 0.5 * r  # flat bottom edge (v grows downwards), apex up
        for a in (np.pi / 6, 5 * np.pi / 6):
            d = np.maximum(d, -(np.float32(np.cos(a)) * u + np.float32(np.sin(a)) * v) - 0.5 * r)
        return d
    if kind == "plus":
        w = 0.35 * r
        return np.minimum(np.maximum(au - r, av - w), np.maximum(au - w, av - r))
    if kind == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.75 * r) - 0.25 * r
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def sdf_mixed(kinds: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance where image i shows shape SHAPES[kinds[i]]."""
    out = np.empty_like(u)
    for k, name in enumerate(SHAPES):
        idx = np.flatnonzero(kinds == k)
        if idx.size:
            out[idx] = sdf(name, u[idx], v[idx], r[idx])
    return out


def box(u: np.ndarray, v: np.ndarray, half_u: np.ndarray, half_v: np.ndarray) -> np.ndarray:
    """Signed distance of an axis-aligned box (in the local frame) with per-image half sizes."""
    return np.maximum(np.abs(u) - half_u[:, None, None], np.abs(v) - half_v[:, None, None])


def coverage(d: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (about one pixel of blur)."""
    return np.clip(0.5 - d * size, 0.0, 1.0)


def paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend per-image `colour` [N, 3] (or [N, H, W, 3]) into `img` [N, H, W, 3] in place."""
    colour = colour if colour.ndim == 4 else colour[:, None, None, :]
    delta = colour - img
    delta *= alpha[..., None]
    img += delta


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of any (equal) shape; returns [..., 3] float32."""
    h = np.asarray(h, np.float32) % 1.0
    k = (np.array([5.0, 3.0, 1.0], np.float32) + h[..., None] * 6.0) % 6.0
    f = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (v[..., None] - v[..., None] * s[..., None] * f).astype(np.float32)


def random_colours(rng: np.random.Generator, n: int, sat: tuple[float, float] = (0.5, 1.0),
                   val: tuple[float, float] = (0.5, 1.0)) -> np.ndarray:
    """`n` random RGB colours [n, 3] with saturation and value in the given ranges."""
    return hsv_to_rgb(rng.random(n), rng.uniform(*sat, n), rng.uniform(*val, n))


def contrasting_colours(rng: np.random.Generator, img: np.ndarray, sat: tuple[float, float] = (0.4, 1.0),
                        gap: float = 0.3) -> np.ndarray:
    """Random colours [N, 3] whose brightness differs from each image's mean brightness by at least `gap`."""
    lum = img.mean(axis=(1, 2, 3))
    dark = rng.uniform(0.0, 1.0, lum.shape) * np.clip(lum - gap, 0.0, None)
    bright = np.minimum(lum + gap + rng.uniform(0.0, 1.0, lum.shape) * np.clip(1.0 - lum - gap, 0.0, None), 1.0)
    v = np.where(lum > 0.5, dark, bright).astype(np.float32)
    return hsv_to_rgb(rng.random(len(lum)), rng.uniform(*sat, len(lum)), v)


def power_noise(rng: np.random.Generator, n: int, size: int, alpha: np.ndarray | float) -> np.ndarray:
    """Noise images [N, H, W] with power spectrum ~ 1/f^alpha, each standardised to mean 0, std 1."""
    white = rng.random((n, size, size), dtype=np.float32)  # uniform: cheaper than normal, same flat spectrum
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2).astype(np.float32)
    f[0, 0] = 1.0 / size
    amp = f[None] ** (-np.asarray(alpha, np.float32).reshape(-1, 1, 1) / 2)
    out = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(size, size)).astype(np.float32)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out


def background(rng: np.random.Generator, n: int, size: int, *, sat: tuple[float, float] = (0.0, 0.6),
               clutter: float = 0.15) -> np.ndarray:
    """Random backgrounds [N, H, W, 3]: a linear gradient between two colours plus smooth clutter."""
    yy, xx = grid(size)
    c0, c1 = random_colours(rng, n, sat, (0.2, 0.9)), random_colours(rng, n, sat, (0.2, 0.9))
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    t = np.cos(angle)[:, None, None] * (xx - 0.5) + np.sin(angle)[:, None, None] * (yy - 0.5) + 0.5
    img = c0[:, None, None, :] + (c1 - c0)[:, None, None, :] * t[..., None]
    img += clutter * rng.uniform(0.2, 1.0, (n, 1, 1, 1)).astype(np.float32) * power_noise(rng, n, size, 2.5)[..., None]
    return img.astype(np.float32)


def to_uint8(img: np.ndarray, rng: np.random.Generator, noise: tuple[float, float] = (0.02, 0.08)) -> np.ndarray:
    """Add per-image pixel noise (uniform, std in `noise`), clip and convert [N, H, W, 3] to uint8 [N, 3, H, W].

    Works in place on `img`; uniform noise because numpy's normal sampler is several times slower.
    """
    sigma = rng.uniform(*noise, (img.shape[0], 1, 1, 1)).astype(np.float32) * np.float32(np.sqrt(12.0))
    grain = rng.random(img.shape, dtype=np.float32)
    grain -= 0.5
    grain *= sigma
    img += grain
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return np.ascontiguousarray(img.astype(np.uint8).transpose(0, 3, 1, 2))
