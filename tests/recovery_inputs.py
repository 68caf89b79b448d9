"""Small synthetic model folders for the recovery input tests (any architecture, bad files, HF layouts).

Each root is heavy-tailed (Laplace) noise in the given shapes; each child adds a dense Gaussian delta to its parent,
which moves it away (l2 grows along the tree) and lowers its kurtosis. Mechanics only, not evidence for the paper.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.conftest import ROOT


def forest(shapes: dict[str, tuple[int, ...]], n_trees: int = 2, children: int = 2, grandchildren: int = 2,
           seed: int = 0, fresh: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[str, str]]]:
    """Models (id -> tensors) and true edges of `n_trees` depth-2 trees; `fresh` tensors (a new task's head) are
    drawn anew in every child."""
    rng = np.random.default_rng(seed)
    models: dict[str, dict[str, np.ndarray]] = {}
    edges: list[tuple[str, str]] = []

    def child_of(parent: str, name: str) -> None:
        scale = rng.uniform(0.2, 0.3)
        models[name] = {k: (v + scale * v.std() * rng.standard_normal(v.shape)).astype(np.float32)
                        for k, v in models[parent].items()}
        for k in fresh:
            models[name][k] = rng.standard_normal(shapes[k]).astype(np.float32)
        edges.append((parent, name))

    for t in range(n_trees):
        root = f"t{t}_root"
        models[root] = {k: rng.laplace(0, 0.05, s).astype(np.float32) for k, s in shapes.items()}
        for c in range(children):
            child_of(root, f"t{t}_c{c}")
            for g in range(grandchildren):
                child_of(f"t{t}_c{c}", f"t{t}_c{c}_g{g}")
    return models, edges


def write_flat(folder: Path, models: dict[str, dict[str, np.ndarray]]) -> Path:
    """One <id>.safetensors per model."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in models.items():
        save_file(tensors, str(folder / f"{name}.safetensors"))
    return folder


def write_truth(path: Path, models: dict, edges: list[tuple[str, str]]) -> Path:
    """A ground-truth graph JSON."""
    path.write_text(json.dumps({"nodes": sorted(models), "edges": [list(e) for e in edges]}))
    return path


def bad_folder(folder: Path, shapes: dict, wide_shapes: dict, cases: tuple[str, ...]) -> dict[str, str]:
    """4 good models (one tree) plus the bad `cases` (truncated, nan, width, duplicate); returns case -> bad file id."""
    models, _ = forest(shapes, n_trees=1, children=1, grandchildren=2, seed=3)
    write_flat(folder, models)
    bad = {}
    if "truncated" in cases:
        save_file({k: v + 0.01 for k, v in models["t0_root"].items()}, str(folder / "cut.safetensors"))
        data = (folder / "cut.safetensors").read_bytes()
        (folder / "cut.safetensors").write_bytes(data[:-64])
        bad["truncated"] = "cut"
    if "nan" in cases:
        w = {k: v.copy() for k, v in models["t0_c0"].items()}
        next(v for k, v in w.items() if v.ndim == 2)[1, 1] = np.nan
        save_file(w, str(folder / "nan_model.safetensors"))
        bad["nan"] = "nan_model"
    if "width" in cases:
        rng = np.random.default_rng(9)
        save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in wide_shapes.items()},
                  str(folder / "wider.safetensors"))
        bad["width"] = "wider"
    if "duplicate" in cases:
        shutil.copy(folder / "t0_c0_g1.safetensors", folder / "t0_c0_g1_copy.safetensors")
        bad["duplicate"] = "t0_c0_g1_copy"
    return bad


def run_cli(tmp_path: Path, *overrides: str, env: dict | None = None, timeout: int = 300
            ) -> subprocess.CompletedProcess:
    """`python run.py +experiment=recover ...` as a user runs it, logs and outputs under tmp_path."""
    import os
    cmd = [sys.executable, str(ROOT / "run.py"), "+experiment=recover", f"paths.log_dir={tmp_path / 'logs'}",
           *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
