"""Synthetic model trees with known answers, for tests and benchmarks (not evidence for the paper's claims).

Full fine-tuning is simulated by a dense random delta on every tensor, LoRA by a merged low-rank delta B @ A on the
chosen 2-D matrices; children inherit their parent's weights. Fine-tuning also shrinks large values a little
(specialization lowers kurtosis), so direction scores decrease from parent to child.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from common.io import write_json


def vit_shapes(dim: int = 768, depth: int = 12, mlp_ratio: int = 4, num_classes: int = 10,
               naming: str = "timm") -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a ViT in timm naming (fused qkv) or Hugging Face naming (separate q/k/v)."""
    h = dim * mlp_ratio
    if naming == "timm":
        s = {"cls_token": (1, 1, dim), "pos_embed": (1, 17, dim), "patch_embed.proj.weight": (dim, 3, 4, 4)}
        for b in range(depth):
            p = f"blocks.{b}."
            s.update({p + "norm1.weight": (dim,), p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                      p + "attn.proj.weight": (dim, dim), p + "mlp.fc1.weight": (h, dim), p + "mlp.fc2.weight": (dim, h)})
        s.update({"norm.weight": (dim,), "head.weight": (num_classes, dim), "head.bias": (num_classes,)})
        return s
    s = {"vit.embeddings.patch_embeddings.projection.weight": (dim, 3, 4, 4)}
    for b in range(depth):
        p = f"vit.encoder.layer.{b}."
        for q in ("query", "key", "value"):
            s[p + f"attention.attention.{q}.weight"] = (dim, dim)
        s.update({p + "attention.output.dense.weight": (dim, dim), p + "intermediate.dense.weight": (h, dim),
                  p + "output.dense.weight": (dim, h), p + "layernorm_before.weight": (dim,)})
    s.update({"classifier.weight": (num_classes, dim), "classifier.bias": (num_classes,)})
    return s


def mlp_shapes(widths: tuple[int, ...] = (16, 32, 32, 10)) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a plain ``nn.Sequential`` MLP of Linear layers: ``layers.K.weight`` / ``layers.K.bias``."""
    s: dict[str, tuple[int, ...]] = {}
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        s[f"layers.{2 * k}.weight"] = (b, a)
        s[f"layers.{2 * k}.bias"] = (b,)
    return s


def tiny_transformer_shapes(dim: int = 16, depth: int = 2, vocab: int = 50) -> dict[str, tuple[int, ...]]:
    """A transformer with its own names (``blocks.0.attn.q.weight``, ``blocks.0.ff.0.weight`` ...), unlike timm's."""
    s: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, dim)}
    for b in range(depth):
        p = f"blocks.{b}."
        for q in ("q", "k", "v", "o"):
            s[p + f"attn.{q}.weight"] = (dim, dim)
        s.update({p + "ln.weight": (dim,), p + "ff.0.weight": (2 * dim, dim), p + "ff.2.weight": (dim, 2 * dim)})
    s["out.weight"] = (vocab, dim)
    return s


def random_weights(shapes: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Heavy-tailed random weights (Student t), float32, like a pre-trained model's."""
    return {k: (0.02 * rng.standard_t(5, size=v)).astype(np.float32) for k, v in shapes.items()}


def finetune(w: dict, rng: np.random.Generator, method: str = "full", scale: float = 1e-3, rank: int = 8,
             targets: tuple[str, ...] = ("qkv", "query", "value"), shrink: float = 0.02) -> dict[str, np.ndarray]:
    """A child of `w`: dense delta (method "full") or merged rank-`rank` LoRA delta on 2-D `targets` ("lora")."""
    out = {}
    for k, v in w.items():
        x = v.astype(np.float64)
        if method == "full":
            x = x - shrink * x * (np.abs(x) > 2 * x.std()) + scale * x.std() * rng.standard_normal(v.shape)
        elif v.ndim == 2 and any(t in k for t in targets) and "head" not in k and "classifier" not in k:
            m, n = v.shape
            x = x + scale * (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))) / np.sqrt(rank * n)
        out[k] = x.astype(np.float32)
    return out


def write_tree(folder: str | Path, shapes: dict, children: dict[str, list[str]], roots: list[str], seed: int = 0,
               method: str = "full", ranks=(8,), scale: float = 1e-3, graph: bool = True) -> dict:
    """Write a model graph (graph.json + models/<id>.safetensors, or flat <id>.safetensors when graph=False)."""
    folder = Path(folder)
    mdir = folder / "models" if graph else folder
    mdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    edges, stage = [], {}

    def grow(node, w):
        save_file(w, str(mdir / f"{node}.safetensors"))
        stage[node] = "specialization"
        for c in children.get(node, []):
            edges.append([node, c])
            grow(c, finetune(w, rng, method, scale, int(rng.choice(ranks))))

    for r in roots:
        grow(r, random_weights(shapes, rng))
    g = {"nodes": sorted(stage), "edges": edges, "stage": stage, "meta": {}}
    if graph:
        write_json(folder / "graph.json", g)
    return g
