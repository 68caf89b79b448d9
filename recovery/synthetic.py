"""Synthetic model trees with known answers, for tests and benchmarks (not evidence for the paper's claims).

Two generators share the heavy-tailed draw (`heavy_tailed`): `write_tree` (any shapes; flat files or a graph folder)
and `write_synthetic_graph` (timm-ViT- or ResNet-named models in a data_gen-style graph folder, the analysis
experiments' toy graphs). Full fine-tuning is simulated by a dense random delta on every tensor, LoRA by a merged low-rank delta B @ A on the
chosen 2-D matrices; children inherit their parent's weights. Fine-tuning also shrinks large values a little
(specialization lowers kurtosis), so direction scores decrease from parent to child.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from common.io import atomic_write, write_json
from common.seed import derive_seed


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


def heavy_tailed(rng: np.random.Generator, shape: tuple[int, ...], df: int = 5, scale: float = 0.02) -> np.ndarray:
    """Heavy-tailed float32 values (Student t with `df` degrees of freedom, times `scale`), like pre-trained weights."""
    return (scale * rng.standard_t(df, size=shape)).astype(np.float32)


def random_weights(shapes: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Heavy-tailed random weights for `shapes` (`heavy_tailed`, df 5), float32, like a pre-trained model's."""
    return {k: heavy_tailed(rng, v) for k, v in shapes.items()}


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


# --- data_gen-style graphs (graph.json with stages and meta, complete: true), as the analysis experiments use

def vit_state(rng: np.random.Generator, dim: int, blocks: int, classes: int) -> dict[str, np.ndarray]:
    """timm-ViT-named float32 tensors; 2-D weights heavy-tailed (Student t, df 4) like pretrained weights."""
    def t(*shape: int) -> np.ndarray:
        return heavy_tailed(rng, shape, df=4, scale=0.02)
    state = {}
    for b in range(blocks):
        p = f"blocks.{b}."
        state |= {p + "attn.qkv.weight": t(3 * dim, dim), p + "attn.proj.weight": t(dim, dim),
                  p + "mlp.fc1.weight": t(4 * dim, dim), p + "mlp.fc2.weight": t(dim, 4 * dim),
                  p + "norm1.weight": np.ones(dim, np.float32)}
    state["head.weight"] = t(classes, dim)
    return state


def resnet_state(rng: np.random.Generator, dim: int, blocks: int, classes: int) -> dict[str, np.ndarray]:
    """timm-ResNet-named float32 tensors: heavy-tailed 3x3 / 1x1 convolutions, BN weights, a head."""
    def t(*shape: int) -> np.ndarray:
        return heavy_tailed(rng, shape, df=4, scale=0.05)
    state = {"conv1.weight": t(dim, 3, 3, 3), "bn1.weight": np.ones(dim, np.float32)}
    for b in range(blocks):
        p = f"layer1.{b}."
        state |= {p + "conv1.weight": t(dim, dim, 1, 1), p + "conv2.weight": t(dim, dim, 3, 3),
                  p + "conv3.weight": t(dim, dim, 1, 1), p + "bn1.weight": np.ones(dim, np.float32)}
    state["fc.weight"] = t(classes, dim)
    return state


def child_state(parent: Mapping[str, np.ndarray], rng: np.random.Generator, method: str, rank: int,
                scale: float) -> dict[str, np.ndarray]:
    """Parent + a dense Gaussian delta (method full) or a rank-`rank` delta B @ A (method lora, qkv only)."""
    out = {}
    for name, w in parent.items():
        if name.startswith(("head", "fc.")):  # a new classifier per task
            out[name] = (rng.standard_normal(w.shape) * 0.02).astype(np.float32)
            continue
        if w.ndim < 2:
            out[name] = w
            continue
        if method == "full":
            delta = rng.standard_normal(w.shape) * scale
        elif "qkv" in name and w.ndim == 2:
            delta = (rng.standard_normal((w.shape[0], rank)) @ rng.standard_normal((rank, w.shape[1]))
                     ) * scale / np.sqrt(rank)
        else:
            delta = 0.0
        out[name] = (w + delta).astype(np.float32)
    return out


def write_synthetic_graph(graph_dir: Path, *, trees: int = 2, depth: int = 2, children: int = 2,
                          method: str = "full", ranks: list[int] | tuple[int, ...] = (4,), dim: int = 32,
                          blocks: int = 2, classes: int = 5, scale: float = 0.004, arch: str = "vit",
                          seed: int = 0) -> Path:
    """Write a synthetic model graph (graph.json + models/<id>.safetensors) with a known heritage.

    Synthetic data for smoke tests: roots are independent heavy-tailed random weights, each child is its parent
    plus an independent delta (dense for "full", low rank on qkv for "lora", each node's rank drawn from
    `ranks`; "mixed" picks per node). `arch` "vit" names tensors like timm's ViT, "resnet" like timm's ResNet.
    Adding Gaussian deltas lowers kurtosis, as the paper observes for fine-tuning, so recovery works here by
    construction: these graphs test mechanics, not the paper's claims.
    """
    if arch not in ("vit", "resnet"):
        raise ValueError(f"synthetic graph arch must be vit or resnet, got {arch!r}")
    if method not in ("full", "lora", "mixed"):
        raise ValueError(f"synthetic graph method must be full, lora or mixed, got {method!r}")
    graph_dir = Path(graph_dir)
    (graph_dir / "models").mkdir(parents=True, exist_ok=True)
    nodes, edges, stage, meta = [], [], {}, {}
    states: dict[str, dict[str, np.ndarray]] = {}
    frontier: list[str] = []
    for t in range(trees):
        rid = f"root{t}"
        make_root = vit_state if arch == "vit" else resnet_state
        states[rid] = make_root(np.random.default_rng(derive_seed(seed, rid)), dim, blocks, classes)
        nodes.append(rid)
        stage[rid] = "generalization"
        meta[rid] = {"task": "synthetic/pretrain", "method": None, "parent": None, "synthetic": True}
        frontier.append(rid)
    for _ in range(depth):
        nxt = []
        for pid in frontier:
            for c in range(children):
                cid = f"{pid}-{c}"
                rng = np.random.default_rng(derive_seed(seed, cid))
                m = method if method != "mixed" else ("full" if rng.random() < 0.5 else "lora")
                rank = int(rng.choice(list(ranks)))
                states[cid] = child_state(states[pid], rng, m, rank, scale)
                nodes.append(cid)
                edges.append([pid, cid])
                stage[cid] = "specialization"
                meta[cid] = {"task": f"synthetic/task{c}", "method": m, "lora_rank": rank if m == "lora" else None,
                             "parent": pid, "seed": derive_seed(seed, cid), "synthetic": True}
                nxt.append(cid)
        frontier = nxt
    for nid in nodes:
        atomic_write(graph_dir / "models" / f"{nid}.safetensors", lambda tmp, s=states[nid]: save_file(s, tmp))
    graph = {"nodes": nodes, "edges": edges, "stage": stage, "meta": meta, "complete": True,
             "name": graph_dir.name, "synthetic": {"trees": trees, "depth": depth, "children": children,
                                                   "method": method, "ranks": list(ranks), "dim": dim,
                                                   "blocks": blocks, "scale": scale, "arch": arch,
                                                   "seed": seed}}
    write_json(graph_dir / "graph.json", graph)
    return graph_dir
