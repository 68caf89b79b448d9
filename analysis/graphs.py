"""Model graphs for the experiments: built (or reused) through data_gen, or synthetic for smoke tests.

`ensure_graph(cfg, "ft_mini")` composes `conf/data_gen/ft_mini.yaml` with Hydra's compose API (so its
`defaults:` list resolves exactly as `python run.py data_gen=ft_mini` would), places it into a copy of the
running config (our paths, seed, logger) and calls data_gen's `build_graph`, which resumes a partial graph and
skips verified nodes. A graph folder whose graph.json says `complete: true` and whose model files all exist is
reused without importing data_gen at all (`analysis.reuse_graphs: false` hands it to data_gen to verify).

Experiments name their graphs with a *graph spec* (`resolve_graph`): a data_gen config name (string), or a
mapping `{data_gen: NAME, overrides: {...}}`, `{path: DIR}` (an existing graph folder), or
`{synthetic: {...}}` (a synthetic graph written by `write_synthetic_graph`: toy scale only), or
`{pretraining: {roots: [...], every: N}}` (the built-in roots' pretraining checkpoints as chains init -> ... ->
final, every node in the generalization stage: `pretraining_chains`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from common.io import atomic_write, jsonable, read_json, sha256_file, write_json
from common.seed import derive_seed

log = logging.getLogger("mother.analysis")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------------- data_gen
def _compose_data_gen(cfg: DictConfig, name: str) -> DictConfig:
    """The `data_gen` node of conf/config.yaml composed with data_gen=<name> (Hydra compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not (CONF_DIR / "data_gen" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF_DIR / "data_gen").glob("*.yaml"))
        raise FileNotFoundError(f"conf/data_gen/{name}.yaml not found; known graph configs: {known}")
    override = [f"data_gen={name}" if "data_gen" in cfg else f"+data_gen={name}"]
    if GlobalHydra.instance().is_initialized():  # inside `python run.py`: reuse the app's search path
        composed = compose(config_name="config", overrides=override)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=override)
    return composed.data_gen


def graph_cfg(cfg: DictConfig, data_gen_name: str, **overrides: Any) -> DictConfig:
    """A copy of `cfg` whose `data_gen` is conf/data_gen/<name>.yaml merged with `overrides`.

    With overrides and no explicit `name`, the graph gets its own folder `<name>-<hash of overrides>`, so a
    variant never overwrites the graph the plain config describes.
    """
    dg = _compose_data_gen(cfg, data_gen_name)
    if overrides:
        OmegaConf.set_struct(dg, False)  # overrides may add keys the file leaves to data_gen's defaults
        dg = OmegaConf.merge(dg, overrides)
        if "name" not in overrides:
            digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
            dg.name = f"{dg.name}-{digest[:8]}"
    sub = cfg.copy()
    with open_dict(sub):
        sub.data_gen = dg
    return sub


def is_complete(graph_dir: Path) -> bool:
    """True when graph_dir/graph.json says complete and every node's weights file exists."""
    path = Path(graph_dir) / "graph.json"
    if not path.is_file():
        return False
    graph = read_json(path)
    if graph.get("complete") is False:
        return False
    return all((Path(graph_dir) / "models" / f"{n}.safetensors").is_file() for n in graph["nodes"])


def ensure_graph(cfg: DictConfig, data_gen_name: str, **overrides: Any) -> Path:
    """Build (or reuse) the graph of conf/data_gen/<name>.yaml under paths.graphs_dir; return its folder."""
    sub = graph_cfg(cfg, data_gen_name, **overrides)
    graph_dir = Path(sub.data_gen.dir)
    if cfg.analysis.get("reuse_graphs", True) and is_complete(graph_dir):
        log.info("reusing graph %s", graph_dir)
        return graph_dir
    from data_gen.graph import build_graph

    summary = build_graph(sub)
    if not summary.get("complete", True):
        raise RuntimeError(f"{graph_dir}: graph build did not finish (pending nodes); rerun to resume")
    return graph_dir


def resolve_graph(cfg: DictConfig, spec: str | Mapping) -> Path:
    """The folder of the graph a spec names (see the module docstring); builds it when needed."""
    if isinstance(spec, str):
        return ensure_graph(cfg, spec)
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    if "data_gen" in spec:
        return ensure_graph(cfg, spec["data_gen"], **(spec.get("overrides") or {}))
    if "path" in spec:
        path = Path(spec["path"])
        if not (path / "graph.json").is_file():
            raise FileNotFoundError(f"{path}: no graph.json (graph spec {spec})")
        return path
    if "synthetic" in spec:
        opts = dict(spec["synthetic"])
        name = opts.pop("name", "synthetic-" + hashlib.sha256(
            json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8])
        graph_dir = Path(cfg.paths.graphs_dir) / name
        if not is_complete(graph_dir):
            write_synthetic_graph(graph_dir, **opts)
        return graph_dir
    if "pretraining" in spec:
        return pretraining_chains(cfg, **dict(spec["pretraining"]))
    raise ValueError(f"graph spec {spec!r}: expected a data_gen name, or a mapping with data_gen, path, synthetic "
                     f"or pretraining")


def pretraining_chains(cfg: DictConfig, roots: list[str], every: int = 100, name: str | None = None) -> Path:
    """A graph of the built-in roots' pretraining checkpoints: per root a chain step_0 (the random init) ->
    step_every -> ... -> the last step, all generalization nodes (the generalization stage of paper Fig. 2).

    Models are hard links to the checkpoints (built with the root when missing); cached by roots and `every`.
    """
    import os
    import shutil

    from data_gen.roots import root_checkpoints

    name = name or f"pretraining-{'-'.join(roots)}-every{every}"
    graph_dir = Path(cfg.paths.graphs_dir) / "analysis" / name
    if is_complete(graph_dir):
        return graph_dir
    (graph_dir / "models").mkdir(parents=True, exist_ok=True)
    nodes, edges, meta = [], [], {}
    for root in roots:
        steps = [(k, p) for k, p in root_checkpoints(root, cache_dir=Path(cfg.data_gen.cache_dir)
                                                     if "data_gen" in cfg else Path(cfg.paths.graphs_dir) / "roots",
                                                     data_dir=cfg.paths.data_dir) if k % every == 0]
        prev = None
        for step, path in steps:
            node = f"{root}-s{step}"
            dst = graph_dir / "models" / f"{node}.safetensors"
            if dst.exists():
                dst.unlink()
            try:
                os.link(path, dst)
            except OSError:
                shutil.copyfile(path, dst)
            nodes.append(node)
            meta[node] = {"root": root, "step": step, "sha256": sha256_file(dst), "parent": prev}
            if prev is not None:
                edges.append([prev, node])
            prev = node
    write_json(graph_dir / "graph.json", {"nodes": nodes, "edges": edges, "stage": dict.fromkeys(nodes, "generalization"),
                                          "meta": meta, "name": name, "complete": True})
    return graph_dir


# ------------------------------------------------------------------------------------------ synthetic
def _root_state(rng: np.random.Generator, dim: int, blocks: int, classes: int) -> dict[str, np.ndarray]:
    """timm-ViT-named float32 tensors; 2-D weights heavy-tailed (Student t, df 4) like pretrained weights."""
    def t(*shape: int) -> np.ndarray:
        return (rng.standard_t(4, size=shape) * 0.02).astype(np.float32)
    state = {}
    for b in range(blocks):
        p = f"blocks.{b}."
        state |= {p + "attn.qkv.weight": t(3 * dim, dim), p + "attn.proj.weight": t(dim, dim),
                  p + "mlp.fc1.weight": t(4 * dim, dim), p + "mlp.fc2.weight": t(dim, 4 * dim),
                  p + "norm1.weight": np.ones(dim, np.float32)}
    state["head.weight"] = t(classes, dim)
    return state


def _resnet_state(rng: np.random.Generator, dim: int, blocks: int, classes: int) -> dict[str, np.ndarray]:
    """timm-ResNet-named float32 tensors: heavy-tailed 3x3 / 1x1 convolutions, BN weights, a head."""
    def t(*shape: int) -> np.ndarray:
        return (rng.standard_t(4, size=shape) * 0.05).astype(np.float32)
    state = {"conv1.weight": t(dim, 3, 3, 3), "bn1.weight": np.ones(dim, np.float32)}
    for b in range(blocks):
        p = f"layer1.{b}."
        state |= {p + "conv1.weight": t(dim, dim, 1, 1), p + "conv2.weight": t(dim, dim, 3, 3),
                  p + "conv3.weight": t(dim, dim, 1, 1), p + "bn1.weight": np.ones(dim, np.float32)}
    state["fc.weight"] = t(classes, dim)
    return state


def _child_state(parent: Mapping[str, np.ndarray], rng: np.random.Generator, method: str, rank: int,
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
    from safetensors.numpy import save_file

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
        make_root = _root_state if arch == "vit" else _resnet_state
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
                states[cid] = _child_state(states[pid], rng, m, rank, scale)
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


def read_graph(graph_dir: Path) -> dict:
    """graph.json of a graph folder (clear error naming the file when missing or broken)."""
    return read_json(Path(graph_dir) / "graph.json")


def graph_folder(folder: str | Path, models: Mapping[str, str | Path], edges: Sequence[tuple[str, str]],
                 meta: Mapping[str, Mapping] | None = None) -> Path:
    """A data_gen-style graph folder (graph.json + models/<id>.safetensors) holding exactly `models`.

    Files are hard-linked (copied when linking fails); models whose parent is not in `edges` as a child are
    roots, staged "generalization" as data_gen stages roots, all others "specialization". Stale files in
    `folder/models` not among `models` are removed, so recovery sees exactly this set.
    """
    import os
    import shutil

    folder = Path(folder)
    mdir = folder / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    for p in mdir.glob("*.safetensors"):
        if p.stem not in models:
            p.unlink()
    for mid, src in models.items():
        dst = mdir / f"{mid}.safetensors"
        if dst.is_file() and sha256_file(dst) == sha256_file(src):
            continue
        tmp = mdir / f".{mid}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    children = {c for _, c in edges}
    graph = {"nodes": sorted(models), "edges": [list(e) for e in edges],
             "stage": {m: ("specialization" if m in children else "generalization") for m in sorted(models)},
             "meta": {m: dict((meta or {}).get(m, {})) for m in sorted(models)}}
    write_json(folder / "graph.json", jsonable(graph))
    return folder


# ------------------------------------------------------------------------------------------- derived
def derived_graph(src: Path, dst: Path, transform: Callable[[str, "torch.Tensor"], "torch.Tensor"], *,
                  tag: Mapping[str, Any], nodes: set[str] | None = None) -> Path:
    """A copy of graph `src` at `dst` with `transform(tensor name, tensor)` applied to the models in `nodes`
    (default all); the other models are hard links (copies where links fail). Cached: a `dst` made from the
    same source graph.json with the same `tag` is reused. graph.json gains `derived` (source, tag, nodes) and
    each transformed node's meta its new sha256 (the original kept as `source_sha256`).
    """
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    graph = read_graph(src)
    chosen = sorted(set(graph["nodes"]) if nodes is None else set(nodes))
    stamp = {"source": str(src), "source_graph_sha256": sha256_file(src / "graph.json"), "tag": dict(tag),
             "nodes": chosen}
    if is_complete(dst) and read_graph(dst).get("derived") == stamp:
        return dst
    (dst / "models").mkdir(parents=True, exist_ok=True)
    meta = {n: dict(m) for n, m in graph.get("meta", {}).items()}
    for node in graph["nodes"]:
        s, d = src / "models" / f"{node}.safetensors", dst / "models" / f"{node}.safetensors"
        if d.exists() or d.is_symlink():
            d.unlink()
        if node in chosen:
            state = {k: transform(k, v) for k, v in load_file(str(s)).items()}
            atomic_write(d, lambda tmp, st=state: save_file(st, tmp))
            meta.setdefault(node, {})
            meta[node]["source_sha256"] = meta[node].get("sha256")
            meta[node]["sha256"] = sha256_file(d)
        else:
            try:
                os.link(s, d)
            except OSError:
                shutil.copyfile(s, d)
    out = {**graph, "meta": meta, "name": dst.name, "derived": stamp, "complete": True}
    write_json(dst / "graph.json", out)
    return dst
