"""Model graphs for the experiments: built (or reused) through data_gen, synthetic (recovery.synthetic) for smoke
tests, derived from another graph, or assembled from given model files (`graph_folder`).

`ensure_graph(cfg, "ft_mini")` composes `conf/data_gen/ft_mini.yaml` with Hydra's compose API (so its
`defaults:` list resolves exactly as `python run.py data_gen=ft_mini` would), places it into a copy of the
running config (our paths, seed, logger) and calls data_gen's `build_graph`, which resumes a partial graph and
skips verified nodes. A graph folder whose graph.json says `complete: true` and whose model files all exist is
reused without importing data_gen at all (`analysis.reuse_graphs: false` hands it to data_gen to verify).

Experiments name their graphs with a *graph spec* (`resolve_graph`): a data_gen config name (string), or a
mapping `{data_gen: NAME, overrides: {...}}`, `{path: DIR}` (an existing graph folder), or
`{synthetic: {...}}` (a synthetic graph written by `recovery.synthetic.write_synthetic_graph`: toy scale only), or
`{pretraining: {roots: [...], every: N}}` (the built-in roots' pretraining checkpoints as chains init -> ... ->
final, every node in the generalization stage: `pretraining_chains`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from common.io import atomic_write, jsonable, read_json, sha256_file, write_json
from common.paths import register_resolvers

log = logging.getLogger("mother.analysis")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------------- data_gen
def _compose_data_gen(cfg: DictConfig, name: str) -> DictConfig:
    """The `data_gen` node of conf/config.yaml composed with data_gen=<name> (Hydra compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()   # the configs extend the schemas in Hydra's ConfigStore
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
        dg = OmegaConf.merge(dg, overrides)   # checked against data_gen's schema: a misspelled key is an error
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


def reusable(cfg: DictConfig) -> bool:
    """True when the graph of `cfg.data_gen` may be used as built: reuse allowed, complete, every node's record
    holds the job the config plans now (`data_gen.graph.changed_jobs`: a changed recipe rebuilds what it changes)
    and every root's source still gives the weights it holds (`data_gen.graph.stale_roots`); otherwise data_gen
    builds it."""
    from data_gen.graph import changed_jobs, stale_roots

    if not (cfg.analysis.get("reuse_graphs", True) and is_complete(Path(cfg.data_gen.dir))):
        return False
    if changed := changed_jobs(cfg):
        log.info("graph %s: %d node(s) planned differently than built (e.g. %s); handing it to data_gen",
                 cfg.data_gen.dir, len(changed), changed[0])
        return False
    return not stale_roots(cfg)


def ensure_graph(cfg: DictConfig, data_gen_name: str, **overrides: Any) -> Path:
    """Build (or reuse) the graph of conf/data_gen/<name>.yaml under paths.graphs_dir; return its folder."""
    from data_gen.graph import build_graph

    sub = graph_cfg(cfg, data_gen_name, **overrides)
    graph_dir = Path(sub.data_gen.dir)
    if reusable(sub):
        log.info("reusing graph %s", graph_dir)
        return graph_dir
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
        from recovery.synthetic import write_synthetic_graph

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

    Models are hard links to the checkpoints (built with the root when missing); cached by roots and `every`, and
    relinked when a checkpoint's sha256 differs from the one recorded (a rebuilt root).
    """
    import os
    import shutil

    from data_gen.roots import root_checkpoints

    name = name or f"pretraining-{'-'.join(roots)}-every{every}"
    graph_dir = Path(cfg.paths.graphs_dir) / "analysis" / name
    cache = Path(cfg.data_gen.cache_dir) if "data_gen" in cfg else Path(cfg.paths.graphs_dir) / "roots"
    chains = {root: [(k, p) for k, p in root_checkpoints(root, cache_dir=cache, data_dir=cfg.paths.data_dir)
                     if k % every == 0] for root in roots}
    wanted = {f"{root}-s{k}": sha256_file(p) for root, steps in chains.items() for k, p in steps}
    if is_complete(graph_dir):
        held = {n: m.get("sha256") for n, m in read_graph(graph_dir).get("meta", {}).items()}
        if held == wanted:
            return graph_dir
        log.warning("%s: the roots' checkpoints changed since it was linked (a rebuilt root); relinking", graph_dir)
    if (graph_dir / "models").is_dir():
        shutil.rmtree(graph_dir / "models")
    (graph_dir / "models").mkdir(parents=True, exist_ok=True)
    nodes, edges, meta = [], [], {}
    for root, steps in chains.items():
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
