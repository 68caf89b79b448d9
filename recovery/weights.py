"""Everything recovery needs from the weights, in one streaming pass over the files.

``analyze_folder`` opens every model once, reads one tensor at a time from all models (peak memory ~ n models x
the largest selected tensor), and from each tensor updates the l2/rms Gram distances, the LoRA ranks (when asked
for) and the direction statistics. ``edge_relations`` tells fine-tuning from adapter edges.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm.auto import tqdm

from common.errors import ConfigError
from common.io import sha256_file
from recovery.checkpoints import STRICT_HINT, CheckpointError, ModelSource, discover, iter_stacked, open_all
from recovery.cues import init_distance, layer_moments, stats_from_moments
from recovery.direction import STATS, stack_stat
from recovery.distances import as_matrix, direct_ranks, layer_ranks, pairwise_sq_dists, reduce_ranks
from recovery.layers import Layer, choose_layers, numel, split_architectures

METRICS = ("l2", "rms", "lora_rank", "auto")
LAYER_DEFAULTS = {"kinds": ["all_2d"], "regex": None, "exclude_heads": True, "fallback": True}
DISTANCE_DEFAULTS = {"metric": "auto", "rank_tol": "weight", "rank_reduce": "max", "low_rank_share": 0.5, "seed": 0}
DIRECTION_DEFAULTS = {"stat": "kurtosis", "kinds": ["dense"], "regex": None, "cues": False, "seed": 0}


@dataclass
class WeightAnalysis:
    """What the weights say: distances, direction scores, and what was left out and why (see docs/DESIGN.md)."""
    ids: list[str]
    stages: dict[str, str]
    distance: np.ndarray
    distance_metric: str
    l2: np.ndarray
    direction: np.ndarray
    direction_per_layer: np.ndarray
    direction_layers: list[str]
    direction_stat: str
    layers: list[str]
    dropped: dict[str, str]
    excluded: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    sq_l2: np.ndarray | None = None          # squared Euclidean distance over all distance tensors
    cues: dict[str, np.ndarray] = field(default_factory=dict)   # cue -> (n, direction layers), recovery.cues
    aliases: dict[str, list[str]] = field(default_factory=dict)  # kept id -> ids of its byte/weight duplicates
    layer_selection: dict = field(default_factory=dict)          # per role: kinds asked, kinds used, fallback
    sources: list[ModelSource] = field(default_factory=list)     # the models kept, in `ids` order
    selected: list[Layer] = field(default_factory=list)          # the distance layers (edge_relations reuses them)


def _options(given: Mapping, defaults: dict, what: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"recovery.{what}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _rank_tol(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return float(value)


def analyze_folder(path: str | Path, *, stages_file: str | Path | None = None, layers: Mapping = {},
                   distance: Mapping = {}, direction: Mapping = {}, progress: bool = True,
                   strict: bool = False) -> WeightAnalysis:
    """Distances (l2 always, plus the configured metric) and direction scores of every model in `path`.

    Models that cannot be used (unreadable file, another architecture, NaN/Inf weights, duplicates) are left out
    with a warning and listed in `excluded`; with `strict` any of them is an error. A duplicate is kept as an alias
    of the model it copies (`aliases`).
    """
    t0 = time.perf_counter()
    lo = _options(layers, LAYER_DEFAULTS, "layers")
    do = _options(distance, DISTANCE_DEFAULTS, "distance")
    ro = _options(direction, DIRECTION_DEFAULTS, "direction")
    if do["metric"] not in METRICS:
        raise ConfigError(f"recovery.distance.metric must be one of {list(METRICS)}, got {do['metric']!r}")
    if ro["stat"] not in STATS:
        raise ConfigError(f"recovery.direction.stat must be one of {list(STATS)}, got {ro['stat']!r}")
    rank_tol = _rank_tol(do["rank_tol"])
    catalog = discover(path, stages_file, strict=strict)
    warnings = list(catalog.warnings)
    models, other_arch = split_architectures(catalog.models)
    if strict and other_arch:
        raise CheckpointError(f"{next(iter(other_arch.values()))}; {STRICT_HINT}")
    excluded = {**catalog.excluded, **other_arch}
    warnings += [f"excluded model {k}: {v}" for k, v in excluded.items()]
    dist_layers, dropped, dist_fb = choose_layers(models, lo["kinds"], lo["regex"], lo["exclude_heads"], lo["fallback"])
    dir_layers, _, dir_fb = choose_layers(models, ro["kinds"], ro["regex"], lo["exclude_heads"], lo["fallback"])
    selection = {"distance": {"kinds": list(lo["kinds"]), "regex": lo["regex"], "used_kinds": dist_fb or list(lo["kinds"]),
                              "fallback": dist_fb is not None, "n_layers": len(dist_layers)},
                 "direction": {"kinds": list(ro["kinds"]), "regex": ro["regex"], "used_kinds": dir_fb or list(ro["kinds"]),
                               "fallback": dir_fb is not None, "n_layers": len(dir_layers)}}
    fell = [(role, sel) for role, sel in selection.items() if sel["fallback"]]
    if fell:
        warnings.append("layers: " + "; ".join(f"{role} kinds {sel['kinds']} match no tensor of these models, used "
                                                f"{sel['n_layers']} tensors of kinds {sel['used_kinds']} instead"
                                                for role, sel in fell)
                        + " (heads excluded; tree.json lists them under layers / direction_layers; choose with "
                          "recovery.layers.kinds / recovery.direction.kinds or a regex)")
    need_ranks = do["metric"] in ("lora_rank", "auto")
    n = len(models)
    by_tensor: dict[str, list[tuple[str, Layer]]] = {}
    for role, group in (("dist", dist_layers), ("dir", dir_layers)):
        for layer in group:
            by_tensor.setdefault(layer.tensor, []).append((role, layer))
    l2_sum, rms_sum, sq_sum = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    same = np.ones((n, n), dtype=bool)
    bad: dict[int, str] = {}
    rank_layers: list[tuple[str, np.ndarray, float]] = []   # (name, ranks, low-rank share)
    rank_stats = {"fast_pairs": 0, "direct_pairs": 0, "skipped_pairs": 0, "seconds": 0.0}
    dir_values = np.full((n, len(dir_layers)), np.nan)
    moments = np.full((n, len(dir_layers), 3), np.nan) if ro["cues"] else None
    init_d = np.full((n, len(dir_layers)), np.nan) if ro["cues"] else None
    dir_index = {layer.name: k for k, layer in enumerate(dir_layers)}
    changed_layers = 0
    stack, readers = open_all(models)
    with stack:
        names = list(by_tensor)
        for name, x in tqdm(iter_stacked(readers, names), total=len(names), desc="weights", disable=not progress):
            flat = x.reshape(n, -1)
            finite = np.isfinite(flat).all(axis=1)
            for i in np.flatnonzero(~finite):
                bad.setdefault(int(i), name)
            ok = np.array([i not in bad for i in range(n)])
            sub = np.flatnonzero(ok)
            ix = np.ix_(sub, sub)
            for role, layer in by_tensor[name]:
                y = layer.take(x)[sub]
                if role == "dir":
                    k = dir_index[layer.name]
                    if ro["cues"]:   # one moment pass gives the cues and (for kurtosis / variance) the stat
                        moments[sub, k] = layer_moments(y)
                        init_d[sub, k] = init_distance(y, layer.name, ro["seed"])
                        derived = stats_from_moments(moments[sub, k])
                    dir_values[sub, k] = (derived[ro["stat"]] if ro["cues"] and ro["stat"] in derived
                                          else stack_stat(y, ro["stat"]))
                    continue
                d2 = pairwise_sq_dists(y)
                l2_sum[ix] += np.sqrt(d2)
                sq_sum[ix] += d2
                rms_sum[ix] += np.sqrt(d2 / y[0].size)
                same[ix] &= d2 == 0
                changed = bool((d2 > 0).any())
                changed_layers += changed
                if need_ranks and y.ndim >= 3 and len(sub) >= 2:
                    t_rank = time.perf_counter()
                    ws = np.stack([as_matrix(w) for w in y]) if y.ndim > 3 else y
                    auto = do["metric"] == "auto"
                    res = layer_ranks(ws, rank_tol, seed=do["seed"], dense="skip" if auto else "direct", d2=d2)
                    share = res.low_rank_share if changed else 1.0
                    skipped = np.argwhere(np.triu(res.ranks < 0, 1))
                    if len(skipped) and share >= do["low_rank_share"]:
                        res.ranks[res.ranks < 0] = 0
                        res.ranks += direct_ranks(ws, res.tol, [tuple(p) for p in skipped])
                        rank_stats["direct_pairs"] += len(skipped)
                    elif len(skipped):
                        rank_stats["skipped_pairs"] += len(skipped)
                    full = np.zeros((n, n), dtype=np.int64)
                    full[ix] = res.ranks
                    rank_layers.append((layer.name, full, share))
                    rank_stats["fast_pairs"] += res.n_fast
                    rank_stats["direct_pairs"] += res.n_direct
                    rank_stats["seconds"] += time.perf_counter() - t_rank
    # -------- exclusions: non-finite weights, then duplicates (kept as aliases of the model they copy)
    for i, tname in sorted(bad.items()):
        reason = f"{models[i].path}: NaN or Inf weights (first in tensor {tname!r})"
        if strict:
            raise CheckpointError(f"{reason}; {STRICT_HINT}")
        excluded[models[i].id] = reason
        warnings.append(f"excluded model {models[i].id}: {reason}")
    keep = [i for i in range(n) if i not in bad]
    aliases: dict[str, list[str]] = {}
    for a_pos, i in enumerate(keep):
        if models[i].id in excluded:
            continue
        for j in keep[a_pos + 1:]:
            if same[i, j] and models[j].id not in excluded:
                byte = (len(models[i].files) == 1 and len(models[j].files) == 1
                        and sha256_file(models[i].files[0]) == sha256_file(models[j].files[0]))
                why = "byte-identical file" if byte else "identical weights on every compared layer"
                reason = (f"{models[j].path}: duplicate of {models[i].id} ({why}); reported as model {models[i].id}, "
                          f"whose node in tree.json lists both ids")
                if strict:
                    raise CheckpointError(f"{reason}; {STRICT_HINT}")
                excluded[models[j].id] = reason
                aliases.setdefault(models[i].id, []).append(models[j].id)
                warnings.append(f"excluded model {models[j].id}: {reason}")
    keep = [i for i in keep if models[i].id not in excluded]
    if len(keep) < 2:
        raise CheckpointError(f"{catalog.root}: fewer than two usable models remain after exclusions "
                              f"({len(keep)} usable); left out: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    kx = np.ix_(keep, keep)
    n_layers = len(dist_layers)
    l2 = l2_sum[kx] / n_layers
    rms = rms_sum[kx] / n_layers
    info: dict = {"layout": catalog.layout, "n_layers": n_layers, "layer_weights": sum(numel(l, models) for l in dist_layers),
                  "rank_tol": rank_tol, "passes": 1}
    metric = do["metric"]
    if need_ranks:
        shares = [s for _, _, s in rank_layers]
        evidence = {"mean_low_rank_share": float(np.mean(shares)) if shares else 0.0,
                    "rank_layers": len(rank_layers), "changed_layers": changed_layers, **rank_stats}
        if metric == "auto":
            metric = "lora_rank" if shares and evidence["mean_low_rank_share"] >= do["low_rank_share"] else "l2"
            evidence["reason"] = (f"mean share of models whose difference from a reference is low rank = "
                                  f"{evidence['mean_low_rank_share']:.2f} (threshold {do['low_rank_share']}) -> {metric}")
            info["auto"] = evidence
        info["ranks"] = evidence
    if metric == "lora_rank":
        used = [(nm, r) for nm, r, s in rank_layers if do["metric"] == "lora_rank" or s >= do["low_rank_share"]]
        if not used:
            raise CheckpointError(f"{catalog.root}: lora_rank needs 2-D layers; none among {len(dist_layers)} selected")
        dist = reduce_ranks([r[kx] for _, r in used], do["rank_reduce"])
        info["rank_layers_used"] = [nm for nm, _ in used]
        info["rank_reduce"] = do["rank_reduce"]
    else:
        dist = l2 if metric == "l2" else rms
    # -------- direction
    dvals = dir_values[keep]
    good = np.isfinite(dvals).all(axis=0)
    for k in np.flatnonzero(~good):
        warnings.append(f"direction: layer {dir_layers[k].name} left out ({ro['stat']} undefined for a constant layer)")
    if not good.any():
        raise CheckpointError(f"{catalog.root}: no layer gives a defined {ro['stat']} for every model")
    dvals = dvals[:, good]
    cues: dict[str, np.ndarray] = {}
    if ro["cues"]:
        cues = {**stats_from_moments(moments[keep][:, good]), "init_distance": init_d[keep][:, good]}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    ids = [models[i].id for i in keep]
    return WeightAnalysis(
        ids=ids, stages={k: catalog.stages[k] for k in ids}, distance=np.asarray(dist, dtype=np.float64),
        distance_metric=metric, l2=l2, direction=dvals.sum(axis=1), direction_per_layer=dvals,
        direction_layers=[l.name for l, g in zip(dir_layers, good) if g], direction_stat=ro["stat"],
        layers=[l.name for l in dist_layers], dropped=dropped, excluded=excluded, warnings=warnings, info=info,
        sq_l2=sq_sum[kx], cues=cues, aliases=aliases, layer_selection=selection,
        sources=[models[i] for i in keep], selected=list(dist_layers))


def edge_relations(path, edges: list[tuple[str, str]], *, layers: Mapping = {}, rank_tol="weight",
                   low_rank_frac: float = 0.25, sources: list[ModelSource] | None = None,
                   selected: list[Layer] | None = None) -> dict[tuple[str, str], str]:
    """"adapter" when the child differs from its parent by a low-rank matrix (rank <= low_rank_frac x min(shape))
    on every changed 2-D layer, else "finetune" (Hugging Face model-card vocabulary).

    `sources` / `selected` (a WeightAnalysis's) skip reading the folder again and reuse its layers.
    """
    lo = _options(layers, LAYER_DEFAULTS, "layers")
    if sources is None:
        catalog = discover(path)
        sources = catalog.models
    by_id = {m.id: m for m in sources}
    missing = sorted({x for e in edges for x in e} - set(by_id))
    if missing:
        raise CheckpointError(f"{path}: edge ids not among the models: {missing}")
    ids = sorted({x for e in edges for x in e})
    models = [by_id[i] for i in ids]
    if not edges:
        return {}
    pos = {m: k for k, m in enumerate(ids)}
    sel = selected if selected is not None else choose_layers(models, lo["kinds"], lo["regex"], lo["exclude_heads"],
                                                              lo["fallback"])[0]
    sel = [l for l in sel if len(models[0].tensors[l.tensor].shape) >= 2]
    low = {tuple(e): True for e in edges}
    changed = {tuple(e): False for e in edges}
    by_tensor: dict[str, list[Layer]] = {}
    for layer in sel:
        by_tensor.setdefault(layer.tensor, []).append(layer)
    stack, readers = open_all(models)
    with stack:
        for name, x in iter_stacked(readers, list(by_tensor)):
            for layer in by_tensor[name]:
                y = layer.take(x)
                for p, c in low:
                    w = np.stack([as_matrix(y[pos[p]]), as_matrix(y[pos[c]])])
                    if np.array_equal(w[0], w[1]):
                        continue
                    changed[(p, c)] = True
                    r = layer_ranks(w, _rank_tol(rank_tol)).ranks[0, 1]
                    low[(p, c)] &= r <= low_rank_frac * min(w.shape[1:])
    return {e: "adapter" if changed[e] and low[e] else "finetune" for e in low}
