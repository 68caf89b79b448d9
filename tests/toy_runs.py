"""Toy-scale analysis runs and what their tests check against: toy configs and stand-in roots, synthetic weight
trajectories, and independent numpy references (Spearman rho, moments, layer sums). Not a test module."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def outlier_trajectory(folder: Path, steps: list[int], *, seed: int = 0, shrink: bool = True) -> list[Path]:
    """Synthetic checkpoints W_t = G + a_t * O, G a heavy-tailed timm-ViT-named state (recovery.synthetic.vit_state)
    and O sparse outliers (12 standard deviations of G's tensor): kurtosis falls with t when `shrink`
    (a_t from 1 down to 0.1), rises otherwise. Writes folder/step_<t>.safetensors; returns the files."""
    from safetensors.numpy import save_file

    from recovery.synthetic import vit_state

    rng = np.random.default_rng(seed)
    base = vit_state(rng, dim=16, blocks=2, classes=5)
    outliers = {k: (rng.random(v.shape) < 0.02) * rng.standard_normal(v.shape) * 12 * v.std()
                for k, v in base.items()}
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, t in enumerate(steps):
        a = np.linspace(1.0, 0.1, len(steps))[i] if shrink else np.linspace(0.1, 1.0, len(steps))[i]
        state = {k: (v + a * outliers[k]).astype(np.float32) for k, v in base.items()}
        files.append(folder / f"step_{t}.safetensors")
        save_file(state, str(files[-1]))
    return files


def shared_dir(tmp_path_factory) -> Path:
    """One folder per test session shared by the toy analysis tests: toy roots and trained models are cached
    there (by spec hash), so Fig. 2, 8 and 13 train their shared runs once."""
    d = tmp_path_factory.getbasetemp() / "toy_shared"
    d.mkdir(exist_ok=True)
    return d


def toy_roots(folder: Path, n: int = 3, arch: str = "vit_mini") -> list[str]:
    """`n` random-init models of `arch` saved as local root files (synthetic stand-ins for built-in roots:
    no pre-training, so nothing about their trends is evidence). Returns their paths."""
    import torch
    from safetensors.torch import save_file

    from data_gen.models import create_model

    out = []
    for i in range(n):
        path = folder / "roots_in" / f"toy_root_{i}.safetensors"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(1000 + i)
            state = {k: v.contiguous() for k, v in create_model(arch, num_classes=7).state_dict().items()}
            save_file(state, str(path), metadata={"arch": arch})
        out.append(str(path))
    return out


def compose_toy(experiment: str, tmp: Path, shared: Path, extra: list[str] | None = None):
    """Toy-scale config of `experiment`: results under tmp, models cached under shared/graphs."""
    from tests.conftest import compose

    over = [f"+experiment={experiment}", "scale=toy", f"analysis.out_dir={tmp / 'results'}",
            f"paths.log_dir={tmp / 'logs'}", f"paths.results_dir={tmp / 'results'}",
            f"paths.graphs_dir={shared / 'graphs'}", f"paths.data_dir={shared / 'data'}", "num_threads=1"]
    return compose(over + list(extra or []), output_dir=tmp / "out")


BUILTIN_VAL = 400  # validation images of every built-in task (data_gen.tasks, builtin/*)


def is_count_of(accuracy, n: int) -> bool:
    """An accuracy measured on `n` examples is k / n for an integer 0 <= k <= n."""
    k = accuracy * n
    return 0 <= accuracy <= 1 and abs(k - round(k)) < 1e-6


# --- independent references: direct numpy, written apart from the code under test ------------------------------

def spearman_np(x, y) -> float:
    """Spearman's rho by hand: Pearson correlation of the ranks, tied values given their mean rank."""
    def ranks(a):
        a = np.asarray(a, dtype=float)
        r = np.empty(len(a))
        r[np.argsort(a, kind="stable")] = np.arange(len(a), dtype=float)
        for v in np.unique(a):
            r[a == v] = r[a == v].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def moment_stat(w: np.ndarray, stat: str, bins: int = 256) -> float:
    """variance, skewness, Pearson kurtosis (m4 / m2^2, not excess) or histogram entropy (nats, `bins` equal bins
    over [min, max]) of all values of `w`, in float64."""
    c = np.asarray(w, dtype=np.float64).ravel()
    if stat == "entropy":
        p = np.histogram(c, bins=bins, range=(c.min(), c.max()))[0] / c.size
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())
    c = c - c.mean()
    m2, m3, m4 = (c ** 2).mean(), (c ** 3).mean(), (c ** 4).mean()
    return {"variance": m2, "skewness": m3 / m2 ** 1.5, "kurtosis": m4 / m2 ** 2}[stat]


# timm ViT tensors by layer kind; q, k, v are the row thirds of the fused qkv
VIT_KINDS = {"dense": (r"blocks\.\d+\.(attn\.proj|mlp\.fc1|mlp\.fc2)\.weight", None),
             "query": (r"blocks\.\d+\.attn\.qkv\.weight", 0), "key": (r"blocks\.\d+\.attn\.qkv\.weight", 1),
             "value": (r"blocks\.\d+\.attn\.qkv\.weight", 2)}


def direct_sum(file, stat: str, kind: str = "dense") -> float:
    """`stat` summed over the ViT layers of `kind` in a safetensors file, by direct numpy."""
    from safetensors.numpy import load_file

    pattern, third = VIT_KINDS[kind]
    total = 0.0
    for name, w in load_file(str(file)).items():
        if re.fullmatch(pattern, name):
            if third is not None:
                n = w.shape[0] // 3
                w = w[third * n:(third + 1) * n]
            total += moment_stat(w, stat)
    return total


def check_panels(results: dict) -> None:
    """finetune_panels' summaries against the series they summarise: each root's Spearman rho recomputed by hand,
    the panel's direction the sign of their mean, consistent iff every |rho| >= min_abs_rho with that sign."""
    import pytest

    for name, p in results["panels"].items():
        mine = [s for s in results["series"] if s["panel"] == name]
        rhos = {s["root"]: spearman_np(s["steps"], s["values"]) for s in mine}
        assert p["spearman"] == pytest.approx(rhos, abs=1e-9), name
        mean = float(np.mean(list(rhos.values())))
        assert p["direction"] == ("up" if mean > 0 else "down"), name
        assert p["consistent"] == all(abs(r) >= results["min_abs_rho"] and (r > 0) == (mean > 0)
                                      for r in rhos.values()), name
