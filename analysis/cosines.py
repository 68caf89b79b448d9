"""Weight soups and cosine similarity to cluster centres (paper Appendix E, Table 6), streamed layer by layer.

The cosine is computed on the concatenation of the selected layers' weights, flattened, in one of two forms:
- "raw": the weights themselves (the paper's wording: "the mean weights across all 5 fine-tuned models");
- "centered": the weights minus a common reference, the mean of all models given (original roots' children and
  merged roots' children alike), so shared structure (e.g. LayerNorm-like offsets, init scale) does not dominate.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

VECTORS = ("raw", "centered")


def soup(states: Sequence[Mapping[str, "torch.Tensor"]]) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """Uniform weight average (a model soup) of state dicts of one architecture.

    Floating tensors present in every state with one shape are averaged; any other tensor (a head of another
    shape, an integer buffer) is taken from the first state and its name returned in the second element.

    Raises:
        ValueError: fewer than two states.
    """
    import torch

    if len(states) < 2:
        raise ValueError(f"a soup needs at least two models, got {len(states)}")
    out, kept_first = {}, []
    for name, t in states[0].items():
        others = [s.get(name) for s in states[1:]]
        if t.is_floating_point() and all(o is not None and o.shape == t.shape for o in others):
            out[name] = torch.stack([t.float(), *(o.float() for o in others)]).mean(0).to(t.dtype).contiguous()
        else:
            out[name] = t.clone()
            kept_first.append(name)
    return out, kept_first


def cosine_to_centres(files: Mapping[str, str | Path], groups: Mapping[str, str], queries: Sequence[str],
                      layers: Sequence[str], *, vectors: str = "raw") -> dict[str, dict[str, float]]:
    """Cosine similarity of each query model to the centre (mean weights) of each group.

    Args:
        files: model id -> safetensors file (every model involved: group members and queries).
        groups: model id -> group name, for the models that make up the centres.
        queries: model ids to compare with each centre.
        layers: tensor names to use (read one at a time; each must exist in every file with one shape).
        vectors: "raw" or "centered" (minus the mean of all models in `files`), see the module docstring.

    Returns:
        {query id: {group name: cosine}}.
    """
    from safetensors import safe_open

    if vectors not in VECTORS:
        raise ValueError(f"vectors must be one of {VECTORS}, got {vectors!r}")
    ids = list(files)
    names = sorted(set(groups.values()))
    members = {g: [ids.index(m) for m, gg in groups.items() if gg == g] for g in names}
    q_idx = [ids.index(q) for q in queries]
    dots = np.zeros((len(q_idx), len(names)))
    q_sq = np.zeros(len(q_idx))
    c_sq = np.zeros(len(names))
    with ExitStack() as stack:
        handles = {i: stack.enter_context(safe_open(str(files[i]), framework="np")) for i in ids}
        for layer in layers:
            try:
                x = np.stack([handles[i].get_tensor(layer).astype(np.float64).ravel() for i in ids])
            except Exception as e:  # safetensors raises its own error types for a missing name
                raise ValueError(f"layer {layer!r} is missing or unreadable in one of the models: {e}") from None
            if vectors == "centered":
                x = x - x.mean(0, keepdims=True)
            centres = np.stack([x[members[g]].mean(0) for g in names])
            q = x[q_idx]
            dots += q @ centres.T
            q_sq += (q * q).sum(1)
            c_sq += (centres * centres).sum(1)
    cos = dots / np.sqrt(np.outer(q_sq, c_sq)).clip(min=1e-300)
    return {q: {g: float(cos[a, b]) for b, g in enumerate(names)} for a, q in enumerate(queries)}


def top_k_parents(cosines: Mapping[str, float], k: int = 2) -> list[str]:
    """The k group names with the highest cosine (ties broken by name), sorted by name."""
    return sorted(sorted(cosines, key=lambda g: (-cosines[g], g))[:k])
