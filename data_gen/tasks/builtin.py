"""Built-in image classification tasks, made without downloads and deterministic from a seed.

Modelled on VTAB's groups: natural (digits, shapes, hue), specialized (textures, spectrum, cells) and
structured (count, position, orientation, distance, elevation, heading). Every generator has the signature
`gen(rng, labels, size) -> uint8 [N, 3, size, size]`: the labels are drawn first (balanced), then each image
is rendered for its label with random nuisance factors (colours, backgrounds, clutter, pixel noise, and for
binned continuous factors a value uniform inside the bin, so bin edges stay ambiguous and accuracy stays
below 100%).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from data_gen.tasks import draw

VERSION = 7  # bump when any generator changes its output; stored with cached arrays
CHUNK = 256  # images rendered per call; part of the definition of the random stream (changing it changes data)


# ----------------------------------------------------------------------------------------------- natural
@lru_cache(maxsize=1)
def _digit_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16) as float32 in [0, 1], and their labels.

    Read straight from the CSV that scikit-learn ships (importing scikit-learn itself takes seconds).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("builtin/digits needs scikit-learn installed (it ships the digits data)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return (data[:, :64] / 16.0).reshape(-1, 8, 8), data[:, 64].astype(np.int64)


def gen_digits(rng: np.random.Generator, labels: np.ndarray, size: int, *, pool: str = "train") -> np.ndarray:
    """scikit-learn digits, upsampled with random scale / rotation / shift, coloured, on clutter.

    The 1797 source digits are split 80/20 into a train and a val pool by a fixed permutation, so val images
    never reuse a train digit.
    """
    src, src_y = _digit_source()
    perm = np.random.default_rng(1797).permutation(len(src))
    cut = int(0.8 * len(src))
    ids = perm[:cut] if pool == "train" else perm[cut:]
    n = len(labels)
    pick = np.empty(n, np.int64)
    for k in range(10):
        cand = ids[src_y[ids] == k]
        where = np.flatnonzero(labels == k)
        pick[where] = rng.choice(cand, where.size)
    glyph = np.pad(src[pick], ((0, 0), (1, 1), (1, 1)))  # [N, 10, 10], zero border
    yy, xx = draw.grid(size)
    scale = rng.uniform(0.6, 0.9, n).astype(np.float32)
    cx, cy = (0.5 + rng.uniform(-0.5, 0.5, (2, n)) * (1 - scale)).astype(np.float32)
    u, v = draw.local(yy, xx, cy, cx, rng.uniform(-0.25, 0.25, n).astype(np.float32))
    # glyph pixel coordinates (pixel centres of the padded 10x10 glyph sit at 0..9, the digit spans 1..8)
    gu = u / scale[:, None, None] * 8 + 4.5
    gv = v / scale[:, None, None] * 8 + 4.5
    gu, gv = np.clip(gu, 0, 9), np.clip(gv, 0, 9)
    x0, y0 = np.minimum(gu.astype(np.int64), 8), np.minimum(gv.astype(np.int64), 8)
    fx, fy = gu - x0, gv - y0
    flat, at = glyph.reshape(n, -1), (y0 * 10 + x0).reshape(n, -1)  # flat gathers: faster than 3-d indexing

    def tap(offset: int) -> np.ndarray:
        return np.take_along_axis(flat, at + offset, axis=1).reshape(x0.shape)
    alpha = (1 - fy) * ((1 - fx) * tap(0) + fx * tap(1)) + fy * ((1 - fx) * tap(10) + fx * tap(11))
    img = draw.background(rng, n, size, clutter=0.08) * np.float32(0.55)  # darker: digits are bright strokes
    alpha = np.clip(alpha * 1.5, 0.0, 1.0)  # bolder strokes
    draw.paint(img, alpha, draw.contrasting_colours(rng, img, (0.0, 0.5), gap=0.35))
    return draw.to_uint8(img, rng, noise=(0.02, 0.05))


def _one_object(rng: np.random.Generator, n: int, kinds: np.ndarray, size: int,
                r: tuple[float, float] = (0.12, 0.3)) -> tuple[np.ndarray, np.ndarray]:
    """Background plus one object of the given shape kinds at a random place; returns (img, coverage)."""
    yy, xx = draw.grid(size)
    rad = rng.uniform(*r, n).astype(np.float32)
    cx, cy = (rad + rng.random((2, n)) * (1 - 2 * rad)).astype(np.float32)
    u, v = draw.local(yy, xx, cy, cx, rng.uniform(0, 2 * np.pi, n).astype(np.float32))
    return draw.background(rng, n, size), draw.coverage(draw.sdf_mixed(kinds, u, v, rad), size)


def gen_shapes(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Which of six shapes (circle, square, triangle, plus, ring, diamond), random colour/size/pose."""
    n = len(labels)
    img, cov = _one_object(rng, n, labels, size, r=(0.2, 0.36))
    draw.paint(img, cov, draw.contrasting_colours(rng, img, (0.3, 1.0), gap=0.35))
    return draw.to_uint8(img, rng, noise=(0.02, 0.08))


def gen_hue(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 8) -> np.ndarray:
    """Hue bin of an object's colour (hue uniform inside the bin), on a dull background."""
    n = len(labels)
    img, cov = _one_object(rng, n, rng.integers(0, len(draw.SHAPES), n), size, r=(0.12, 0.3))
    hue = draw.uniform_in_bin(rng, labels, 0.0, 1.0, num_classes)
    colour = draw.hsv_to_rgb(hue, rng.uniform(0.35, 1.0, n), rng.uniform(0.4, 1.0, n))
    draw.paint(img, cov, colour)
    return draw.to_uint8(img, rng)


# ------------------------------------------------------------------------------------------- specialized
def gen_textures(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Eight procedural textures: coarse / fine stripes, checkers, dots, smooth / fine noise, rings, waves."""
    n = len(labels)
    yy, xx = draw.grid(size)
    u, v = draw.local(yy, xx, rng.random(n).astype(np.float32), rng.random(n).astype(np.float32),
                      rng.uniform(0, np.pi, n).astype(np.float32))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    two_pi = np.float32(2 * np.pi)
    f = np.where(labels == 1, rng.uniform(5.0, 8.0, n), rng.uniform(1.5, 4.0, n)).astype(np.float32)[:, None, None]
    pattern = np.empty((n, size, size), np.float32)
    for k in range(8):
        i = np.flatnonzero(labels == k)
        if not i.size:
            continue
        ui, vi, fi, pi = u[i], v[i], f[i], phase[i]
        if k in (0, 1):    # stripes
            p = np.sin(two_pi * fi * ui + pi)
        elif k == 2:       # checkers
            p = np.sign(np.sin(two_pi * fi * ui + pi) * np.sin(two_pi * fi * vi)) * 0.8
        elif k == 3:       # dots
            p = (np.sin(two_pi * fi * ui + pi) * np.sin(two_pi * fi * vi) > 0.5) * 2.0 - 1.0
        elif k == 4:       # smooth noise
            p = draw.power_noise(rng, i.size, size, 3.0) * 0.5
        elif k == 5:       # fine noise
            p = draw.power_noise(rng, i.size, size, 0.5) * 0.5
        elif k == 6:       # concentric rings
            p = np.sin(two_pi * fi * np.sqrt(ui * ui + vi * vi) + pi)
        else:              # wavy stripes
            p = np.sin(two_pi * fi * ui + 0.8 * np.sin(two_pi * 1.5 * vi) * fi / 2 + pi)
        pattern[i] = p
    t = np.clip(0.5 + 0.5 * pattern * rng.uniform(0.3, 1.0, (n, 1, 1)).astype(np.float32), 0, 1)
    c0, c1 = draw.random_colours(rng, n, (0, 0.8), (0.1, 0.6)), draw.random_colours(rng, n, (0, 0.8), (0.5, 1.0))
    img = c0[:, None, None, :] + (c1 - c0)[:, None, None, :] * t[..., None]
    return draw.to_uint8(img, rng, noise=(0.02, 0.1))


def gen_spectrum(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 5) -> np.ndarray:
    """Exponent bin of 1/f^alpha noise (alpha uniform in [0.5, 3.0) split into bins), random colour map."""
    n = len(labels)
    alpha = draw.uniform_in_bin(rng, labels, 0.5, 3.0, num_classes)
    t = np.clip(0.5 + draw.power_noise(rng, n, size, alpha) * rng.uniform(0.12, 0.3, (n, 1, 1)), 0, 1)
    c0, c1 = draw.random_colours(rng, n, (0, 1), (0.0, 0.5)), draw.random_colours(rng, n, (0, 1), (0.5, 1.0))
    img = (c0[:, None, None, :] + (c1 - c0)[:, None, None, :] * t[..., None]).astype(np.float32)
    return draw.to_uint8(img, rng, noise=(0.0, 0.05))


def gen_cells(rng: np.random.Generator, labels: np.ndarray, size: int, *, max_cells: int = 18) -> np.ndarray:
    """Patch-Camelyon-like: pink tissue with purple nuclei; class 1 has enlarged nuclei (noisy sizes)."""
    n = len(labels)
    base = np.where(labels == 1, rng.uniform(0.05, 0.075, n), rng.uniform(0.03, 0.05, n)).astype(np.float32)
    tissue = draw.hsv_to_rgb(rng.uniform(0.85, 0.98, n), rng.uniform(0.1, 0.4, n), rng.uniform(0.75, 1.0, n))
    img = np.broadcast_to(tissue[:, None, None, :], (n, size, size, 3)).copy()
    img += 0.08 * draw.power_noise(rng, n, size, 2.0)[..., None]
    count = rng.integers(8, max_cells + 1, n)
    nuclei = np.zeros((n, size, size), np.float32)  # union of nucleus coverages
    rows = np.arange(n)[:, None, None]
    for j in range(max_cells):
        scale = np.minimum(rng.lognormal(0.0, 0.25, n), 2.0).astype(np.float32)
        r = base * scale * (count > j)  # radius 0: no nucleus
        cx, cy = rng.random((2, n)).astype(np.float32)
        iy, ix, wy, wx = draw.window(cy, cx, 0.075 * 2.0, size)
        u, v = draw.local(wy, wx, cy, cx, rng.uniform(0, np.pi, n).astype(np.float32))
        v /= rng.uniform(0.6, 1.0, (n, 1, 1)).astype(np.float32)
        cov = draw.coverage(np.sqrt(u * u + v * v) - r[:, None, None], size)
        idx = rows, iy[:, :, None], ix[:, None, :]
        nuclei[idx] = np.maximum(nuclei[idx], cov)
    colour = draw.hsv_to_rgb(rng.uniform(0.7, 0.8, n), rng.uniform(0.4, 0.8, n), rng.uniform(0.25, 0.6, n))
    draw.paint(img, nuclei * rng.uniform(0.7, 1.0, (n, 1, 1)).astype(np.float32), colour)
    return draw.to_uint8(img, rng, noise=(0.02, 0.06))


# -------------------------------------------------------------------------------------------- structured
def gen_count(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 8) -> np.ndarray:
    """Number of objects (label + 1), placed in distinct cells of a jittered 4x4 grid (CLEVR count-like)."""
    n = len(labels)
    img = draw.background(rng, n, size)
    cells = rng.random((n, 16)).argsort(axis=1)
    for j in range(num_classes):
        on = labels >= j
        cell = cells[:, j]
        r = rng.uniform(0.045, 0.09, n).astype(np.float32)
        slack = 0.125 - r
        cx = ((cell % 4) + 0.5) / 4 + rng.uniform(-1, 1, n) * slack
        cy = ((cell // 4) + 0.5) / 4 + rng.uniform(-1, 1, n) * slack
        cy, cx = cy.astype(np.float32), cx.astype(np.float32)
        iy, ix, wy, wx = draw.window(cy, cx, 0.09 * 1.25, size)  # squares reach 1.2 r at the corners
        u, v = draw.local(wy, wx, cy, cx, rng.uniform(0, 2 * np.pi, n).astype(np.float32))
        cov = draw.coverage(draw.sdf_mixed(rng.integers(0, len(draw.SHAPES), n), u, v, r), size)
        colour = draw.contrasting_colours(rng, img, (0.3, 1.0), gap=0.25)
        draw.paint_window(img, iy, ix, cov * on[:, None, None], colour)
    return draw.to_uint8(img, rng)


def gen_position(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 8) -> np.ndarray:
    """Horizontal position bin of a single object (dSprites x-position-like), random y, shape, colour."""
    n = len(labels)
    yy, xx = draw.grid(size)
    r = rng.uniform(0.1, 0.16, n).astype(np.float32)
    cx = draw.uniform_in_bin(rng, labels, 0.1, 0.9, num_classes)
    cy = rng.uniform(0.15, 0.85, n).astype(np.float32)
    u, v = draw.local(yy, xx, cy, cx, rng.uniform(0, 2 * np.pi, n).astype(np.float32))
    img = draw.background(rng, n, size)
    cov = draw.coverage(draw.sdf_mixed(rng.integers(0, len(draw.SHAPES), n), u, v, r), size)
    draw.paint(img, cov, draw.contrasting_colours(rng, img, gap=0.4))
    return draw.to_uint8(img, rng)


def gen_orientation(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 8) -> np.ndarray:
    """Orientation bin (over 180 degrees) of an elongated bar (dSprites orientation-like)."""
    n = len(labels)
    yy, xx = draw.grid(size)
    angle = draw.uniform_in_bin(rng, labels, 0.0, np.pi, num_classes)
    cx, cy = rng.uniform(0.35, 0.65, (2, n)).astype(np.float32)
    u, v = draw.local(yy, xx, cy, cx, angle)
    d = draw.box(u, v, rng.uniform(0.15, 0.3, n).astype(np.float32), rng.uniform(0.03, 0.07, n).astype(np.float32))
    img = draw.background(rng, n, size)
    draw.paint(img, draw.coverage(d, size), draw.contrasting_colours(rng, img))
    return draw.to_uint8(img, rng)


def gen_distance(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 6,
                 num_objects: int = 3) -> np.ndarray:
    """Depth bin of the closest of a few objects on a ground plane (CLEVR closest-distance-like).

    Depth z in [1, 4]: screen size ~ 1/z and the object's base sits lower in the image when closer, both with
    per-object jitter; objects are drawn far to near.
    """
    n = len(labels)
    yy, _ = draw.grid(size)
    zmin = np.exp(draw.uniform_in_bin(rng, labels, 0.0, np.log(4.0), num_classes))
    z = np.concatenate([zmin[:, None], rng.uniform(zmin[:, None], 4.5, (n, num_objects - 1))], axis=1)
    horizon = rng.uniform(0.25, 0.4, n).astype(np.float32)
    sky, ground = draw.random_colours(rng, n, (0, 0.4), (0.6, 1.0)), draw.random_colours(rng, n, (0, 0.5), (0.2, 0.6))
    img = np.where((yy < horizon[:, None, None])[..., None], sky[:, None, None, :], ground[:, None, None, :])
    img = img + 0.1 * draw.power_noise(rng, n, size, 2.5)[..., None]
    for j in np.argsort(-z, axis=1).T:  # far to near
        zj = z[np.arange(n), j].astype(np.float32)
        r = (0.14 / zj * rng.uniform(0.85, 1.15, n)).astype(np.float32)
        cy = horizon + (1 - horizon) * 0.9 / zj * rng.uniform(0.9, 1.1, n).astype(np.float32) - r
        cx = rng.uniform(0.1, 0.9, n).astype(np.float32)
        iy, ix, wy, wx = draw.window(cy, cx, 0.14 * 1.15 * 1.25, size)
        u, v = draw.local(wy, wx, cy, cx)
        cov = draw.coverage(draw.sdf_mixed(rng.integers(0, 3, n), u, v, r), size)
        draw.paint_window(img, iy, ix, cov, draw.contrasting_colours(rng, img, gap=0.25))
    return draw.to_uint8(img.astype(np.float32), rng)


def gen_elevation(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 6) -> np.ndarray:
    """Viewing-elevation bin of a coin (a cylinder seen from 10 to 90 degrees; smallNORB elevation-like)."""
    n = len(labels)
    yy, xx = draw.grid(size)
    elev = draw.uniform_in_bin(rng, labels, np.deg2rad(10.0), np.deg2rad(90.0), num_classes)
    a = rng.uniform(0.2, 0.33, n).astype(np.float32)
    b = a * np.sin(elev)
    thick = a * rng.uniform(0.15, 0.3, n).astype(np.float32) * np.cos(elev)
    cx, cy = rng.uniform(0.38, 0.62, (2, n)).astype(np.float32)
    tilt = rng.uniform(-0.4, 0.4, n).astype(np.float32)
    img = draw.background(rng, n, size)
    colour = draw.contrasting_colours(rng, img, gap=0.25)
    for dy, shade in ((thick, 0.55), (np.zeros_like(thick), 1.0)):  # side, then top face
        u, v = draw.local(yy, xx, cy + dy, cx, tilt)
        d = (np.sqrt((u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2) - 1) * b[:, None, None]
        draw.paint(img, draw.coverage(d, size), colour * shade)
    return draw.to_uint8(img, rng)


def gen_heading(rng: np.random.Generator, labels: np.ndarray, size: int, *, num_classes: int = 12) -> np.ndarray:
    """Direction bin (over 360 degrees) of a clock hand on a dial (smallNORB azimuth-like)."""
    n = len(labels)
    yy, xx = draw.grid(size)
    theta = draw.uniform_in_bin(rng, labels, 0.0, 2 * np.pi, num_classes)
    rad = rng.uniform(0.22, 0.36, n).astype(np.float32)
    cx, cy = rng.uniform(0.4, 0.6, (2, n)).astype(np.float32)
    img = draw.background(rng, n, size)
    u, v = draw.local(yy, xx, cy, cx)
    dial = draw.contrasting_colours(rng, img, (0.0, 0.5), gap=0.2)
    draw.paint(img, draw.coverage(draw.sdf("circle", u, v, rad), size), dial)
    hx, hy = cx + 0.4 * rad * np.cos(theta), cy + 0.4 * rad * np.sin(theta)
    u, v = draw.local(yy, xx, hy, hx, theta)
    hand = draw.box(u, v, 0.45 * rad, 0.14 * rad)
    draw.paint(img, draw.coverage(hand, size), draw.contrasting_colours(rng, dial[:, None, None, :], (0.5, 1.0), 0.4))
    return draw.to_uint8(img, rng)


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Generator:
    """A built-in task: its generator, number of classes, VTAB-like group and a one-line description."""
    fn: Callable[..., np.ndarray]
    num_classes: int
    group: str
    description: str


GENERATORS: dict[str, Generator] = {
    "digits": Generator(gen_digits, 10, "natural", "scikit-learn digits, upsampled, coloured, on clutter"),
    "shapes": Generator(gen_shapes, len(draw.SHAPES), "natural", "shape class of one object"),
    "hue": Generator(gen_hue, 8, "natural", "hue bin of one object's colour"),
    "textures": Generator(gen_textures, 8, "specialized", "procedural texture family"),
    "spectrum": Generator(gen_spectrum, 5, "specialized", "exponent bin of 1/f^alpha noise"),
    "cells": Generator(gen_cells, 2, "specialized", "normal vs enlarged nuclei (Camelyon-like)"),
    "count": Generator(gen_count, 8, "structured", "number of objects minus one (CLEVR count-like)"),
    "position": Generator(gen_position, 8, "structured", "x-position bin of one object (dSprites-like)"),
    "orientation": Generator(gen_orientation, 8, "structured", "orientation bin of a bar (dSprites-like)"),
    "distance": Generator(gen_distance, 6, "structured", "depth bin of the closest object (CLEVR-like)"),
    "elevation": Generator(gen_elevation, 6, "structured", "viewing elevation bin of a coin (smallNORB-like)"),
    "heading": Generator(gen_heading, 12, "structured", "direction bin of a clock hand (smallNORB azimuth-like)"),
}


def generate(name: str, split: str, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 3, size, size] and balanced labels int64 [n] of built-in task `name` for one split.

    The random stream is derived from (seed, name, split), so train and val are independent and a split does
    not change when the other split's size changes.
    """
    from common.seed import derive_seed

    if name not in GENERATORS:
        raise KeyError(f"unknown built-in task {name!r}; known: {sorted(GENERATORS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    g = GENERATORS[name]
    rng = np.random.default_rng(derive_seed(seed, "builtin", name, split))
    labels = draw.balanced_labels(rng, n, g.num_classes)
    kwargs = {"pool": split} if name == "digits" else {}
    images = np.empty((n, 3, size, size), np.uint8)
    for start in range(0, n, CHUNK):  # chunks keep the float working set in cache (several times faster)
        images[start:start + CHUNK] = g.fn(rng, labels[start:start + CHUNK], size, **kwargs)
    return images, labels
