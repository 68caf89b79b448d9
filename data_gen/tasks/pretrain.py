"""Root pretraining sets ("pretrain/<recipe>"): unions of built-in generators with relabelled classes.

The two recipes use disjoint sets of generators, so roots pretrained on them (from different random inits)
share neither data nor labels. Classes of component k are shifted by the class counts of components before it;
every class gets about the same number of images.
"""
from __future__ import annotations

import numpy as np

from data_gen.tasks.builtin import GENERATORS, generate

MIXES: dict[str, tuple[str, ...]] = {
    "mix_a": ("shapes", "textures", "hue", "count", "distance"),                       # 36 classes
    "mix_b": ("digits", "orientation", "heading", "spectrum", "cells", "position", "elevation"),  # 51 classes
}


def mix_classes(recipe: str) -> list[tuple[str, int]]:
    """[(component task, class offset), ...] of a recipe."""
    if recipe not in MIXES:
        raise KeyError(f"unknown pretraining recipe {recipe!r}; known: {sorted(MIXES)}")
    out, offset = [], 0
    for task in MIXES[recipe]:
        out.append((task, offset))
        offset += GENERATORS[task].num_classes
    return out


def num_classes(recipe: str) -> int:
    """Total number of classes of a recipe."""
    return sum(GENERATORS[t].num_classes for t, _ in mix_classes(recipe))


def generate_mix(recipe: str, split: str, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and relabelled labels of a pretraining mix, shuffled; about n / num_classes images per class."""
    from common.seed import derive_seed

    parts = mix_classes(recipe)
    total = num_classes(recipe)
    counts = [round(n * GENERATORS[t].num_classes / total) for t, _ in parts]
    counts[-1] += n - sum(counts)
    xs, ys = [], []
    for (task, offset), m in zip(parts, counts):
        x, y = generate(task, split, m, size, derive_seed(seed, "pretrain", recipe, task))
        xs.append(x)
        ys.append(y + offset)
    order = np.random.default_rng(derive_seed(seed, "pretrain", recipe, split, "order")).permutation(n)
    return np.concatenate(xs)[order], np.concatenate(ys)[order]
