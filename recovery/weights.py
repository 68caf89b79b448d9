"""Everything recovery needs from the weights, in one streaming pass over the files.

``analyze_folder`` opens every model once, reads one tensor at a time from all models (a reader thread fills the
next tensor's stack while this one is processed; peak memory ~ 2 x n models x the largest selected tensor), and
from each tensor updates the l2/rms Gram distances, the LoRA ranks (when asked for) and the direction statistics;
only the selected bytes are read, once. ``edge_relations`` tells fine-tuning from adapter edges from what that
pass kept (rank evidence, or full-rank certificates under metric l2 / rms).
"""
from __future__ import annotations

import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm.auto import tqdm

from common.io import sha256_file
from common.schema import merge_options
from recovery.checkpoints import STRICT_HINT, CheckpointError, ModelSource, discover
from recovery.accumulate import (CueMoments, DirectionStats, FinetuneCertificates, GramSums, LayerBatch, RankEvidence,
                                 RankFactors, SketchEvidence)
from recovery.config import DirectionOptions, DistanceOptions, LayersOptions
from recovery.distances import as_matrix, layer_ranks, pairwise_sq_dists, reduce_ranks
from recovery.kernels import BlasThreads, Kernel
from recovery.layers import Layer, choose_layers, models_disagree, numel, split_architectures
from recovery.reader import iter_stacked, open_all
from recovery.ties import TieBreak, group_members, tie_groups


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
    rank_evidence: RankEvidence | SketchEvidence | None = None   # per-layer pair ranks / certificates (edge labels)
    ties: TieBreak | None = None             # models equal on every direction layer, and their second key

    def subset(self, ids: list[str]) -> "WeightAnalysis":
        """This analysis restricted to the models `ids`, in that order, as if the others were not in the folder.

        Distances, direction scores, cues and sources are sliced; `rank_evidence` (indexed by the full analysis'
        models) is dropped, so edge labels of a subset are read again from the files.
        """
        idx = [self.ids.index(i) for i in ids]
        sq = np.ix_(idx, idx)
        return replace(self, ids=list(ids), stages={i: self.stages[i] for i in ids}, distance=self.distance[sq],
                       l2=self.l2[sq], sq_l2=None if self.sq_l2 is None else self.sq_l2[sq],
                       direction=self.direction[idx], direction_per_layer=self.direction_per_layer[idx],
                       cues={k: v[idx] for k, v in self.cues.items()},
                       sources=[self.sources[j] for j in idx] if self.sources else [], rank_evidence=None,
                       ties=None if self.ties is None else self.ties.subset(idx))


def _rank_tol(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return float(value)


def analyze_folder(path: str | Path, *, stages_file: str | Path | None = None, layers: Mapping = {},
                   distance: Mapping = {}, direction: Mapping = {}, progress: bool = True,
                   strict: bool = False, device: str = "auto", direct_io: bool = True) -> WeightAnalysis:
    """Distances (l2 always, plus the configured metric) and direction scores of every model in `path`.

    Models that cannot be used (unreadable file, another architecture, NaN/Inf weights, duplicates) are left out
    with a warning and listed in `excluded`; with `strict` any of them is an error. A duplicate is kept as an alias
    of the model it copies (`aliases`). `device` (recovery.device: auto | cpu | cuda) is where the Gram products and
    the rank factorizations run (recovery.kernels); `direct_io` reads large uncached tensors with O_DIRECT
    (recovery.direct_io).
    """
    t0 = time.perf_counter()
    kernel = Kernel.for_device(device)
    lo = merge_options(LayersOptions, layers, "recovery.layers")
    do = merge_options(DistanceOptions, distance, "recovery.distance")
    ro = merge_options(DirectionOptions, direction, "recovery.direction")
    rank_tol = _rank_tol(do["rank_tol"])
    catalog = discover(path, stages_file, strict=strict)
    warnings = list(catalog.warnings)
    models, other_arch = split_architectures(catalog.models)
    if strict and other_arch:
        raise CheckpointError(f"{next(iter(other_arch.values()))}; {STRICT_HINT}")
    excluded = {**catalog.excluded, **other_arch}
    warnings += [f"excluded model {k}: {v}" for k, v in excluded.items()]
    dist_layers, dropped, selection = _select(models, lo, ro, warnings)
    _warn_disagreements(dropped, strict, catalog.root, warnings)
    dir_layers = selection.pop("_dir_layers")
    n = len(models)
    gram = GramSums(n)
    ranks = (RankFactors(n, do["metric"], rank_tol, do["seed"], do["low_rank_share"], do["rank_reduce"],
                         kernel=kernel)
             if do["metric"] in ("lora_rank", "auto") else None)
    cue_acc = CueMoments(n, len(dir_layers), ro["seed"]) if ro["cues"] else None
    direction_acc = DirectionStats(n, dir_layers, ro["stat"], cue_acc)
    certs = FinetuneCertificates(n, rank_tol, do["seed"]) if ranks is None else None
    bad = _stream(models, dist_layers, dir_layers, [gram] + [a for a in (ranks, certs) if a is not None],
                  direction_acc, kernel, progress, direct_io)
    keep, aliases = exclude_models(models, bad, gram.same, excluded, warnings, strict, catalog.root)
    kx = np.ix_(keep, keep)
    n_layers = len(dist_layers)
    l2, rms = gram.l2[kx] / n_layers, gram.rms[kx] / n_layers
    info: dict = {"layout": catalog.layout, "n_layers": n_layers, "layer_weights": sum(numel(l, models) for l in dist_layers),
                  "rank_tol": rank_tol, "passes": 1, "device": kernel.describe()}
    ids = [models[i].id for i in keep]
    dist, metric = choose_metric(do, l2, rms, ranks, keep, gram.changed_layers, info, catalog.root, n_layers)
    evidence = (ranks if ranks is not None else certs).evidence(keep, ids, gram.same_2d)
    dvals, good = _direction_values(direction_acc.values[keep], dir_layers, ro["stat"], warnings, catalog.root)
    cues = cue_acc.cues(keep, good) if cue_acc is not None else {}
    ties = None
    if ro["ties"] == "other_layers":
        ties = _tie_break(models, keep, ids, dvals, dist_layers, dir_layers, ro, kernel, direct_io, warnings)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return WeightAnalysis(
        ids=ids, stages={k: catalog.stages[k] for k in ids}, distance=np.asarray(dist, dtype=np.float64),
        distance_metric=metric, l2=l2, direction=dvals.sum(axis=1), direction_per_layer=dvals,
        direction_layers=[l.name for l, g in zip(dir_layers, good) if g], direction_stat=ro["stat"],
        layers=[l.name for l in dist_layers], dropped=dropped, excluded=excluded, warnings=warnings, info=info,
        sq_l2=gram.sq[kx], cues=cues, aliases=aliases, layer_selection=selection,
        sources=[models[i] for i in keep], selected=list(dist_layers), rank_evidence=evidence, ties=ties)


def _tie_break(models: list[ModelSource], keep: list[int], ids: list[str], dvals: np.ndarray, dist_layers: list[Layer],
               dir_layers: list[Layer], ro: dict, kernel: Kernel, direct_io: bool, warnings: list[str]
               ) -> TieBreak | None:
    """Models equal on every direction layer (recovery.ties), with their statistic (and cues) on the other selected
    layers: a second pass that reads just those models and layers. None when there are no such models, or no other
    layer gives a defined statistic; one warning when there are, naming any that stay equal."""
    groups = tie_groups(dvals)
    members = np.flatnonzero(groups >= 0)
    if not len(members):
        return None
    tied = group_members(groups, ids)
    shown = "; ".join(", ".join(g[:3]) + (", ..." if len(g) > 3 else "") for g in tied[:2])
    shown += "; ..." if len(tied) > 2 else ""
    msg = (f"direction: {len(members)} models in {len(tied)} group(s) are equal on every direction layer (kinds "
           f"{list(ro['kinds'])}; {shown})")
    stay = ("their edges follow the order of the files; choose recovery.direction.kinds (or a regex) that their "
            "fine-tunes changed")
    # The first pass read these layers too, but ties are known only once every direction layer is read; computing
    # the statistic on every distance layer of every model there would cost each untied folder ~1/3 more moments.
    named = {layer.name for layer in dir_layers}
    other = [layer for layer in dist_layers if layer.name not in named]
    sub = [models[keep[i]] for i in members]
    cue_acc = CueMoments(len(sub), len(other), ro["seed"]) if ro["cues"] else None
    acc = DirectionStats(len(sub), other, ro["stat"], cue_acc)
    if other:
        _stream(sub, [], other, [], acc, kernel, progress=False, direct_io=direct_io)
    good = np.isfinite(acc.values).all(axis=0)
    if not good.any():
        warnings.append(f"{msg}, and no other selected layer gives a defined {ro['stat']}: {stay}")
        return None
    rows = np.arange(len(sub))
    values = cue_acc.cues(rows, good) if cue_acc is not None else {ro["stat"]: acc.values[:, good]}
    per_layer = {}
    for name, v in values.items():
        per_layer[name] = np.full((len(ids), v.shape[1]), np.nan)
        per_layer[name][members] = v
    ties = TieBreak(groups, [layer.name for layer, g in zip(other, good) if g], per_layer, ro["stat"])
    msg += (f": within a group, edges are oriented by the {ro['stat']} on the {len(ties.layers)} other selected "
            f"layers, where they differ (tree.json: direction_ties; recovery.direction.ties=none leaves them tied)")
    still = tie_groups(np.column_stack([groups[members], values[ro["stat"]]]))
    if (still >= 0).any():
        left = [ids[members[i]] for i in np.flatnonzero(still >= 0)]
        more = ", ..." if len(left) > 4 else ""
        msg += f"; {len(left)} of them ({', '.join(left[:4])}{more}) are equal there too: {stay}"
    warnings.append(msg)
    return ties


def _warn_disagreements(dropped: dict[str, str], strict: bool, root: Path, warnings: list[str]) -> None:
    """One warning (with `strict`: a CheckpointError) for tensors of the chosen kinds that the models disagree on
    (missing in some, or shaped differently): they are left out of every model's distances."""
    disagree = {k: v for k, v in dropped.items() if models_disagree(v)}
    if not disagree:
        return
    shown = "; ".join(f"{k}: {v}" for k, v in list(disagree.items())[:3]) + ("; ..." if len(disagree) > 3 else "")
    msg = (f"{root}: {len(disagree)} tensor(s) of the chosen kinds left out of every model because the models "
           f"disagree on them ({shown}); tree.json lists every dropped tensor under `dropped`")
    if strict:
        raise CheckpointError(f"{msg}; recovery.strict=true makes this fatal")
    warnings.append(msg)


def _select(models: list[ModelSource], lo: dict, ro: dict, warnings: list[str]
            ) -> tuple[list[Layer], dict[str, str], dict]:
    """Distance layers, dropped tensors, and the selection record of both roles (direction layers under
    "_dir_layers"); a warning when a role fell back to the widest kinds."""
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
    selection["_dir_layers"] = dir_layers
    return dist_layers, dropped, selection


def _read_plan(groups: dict[str, list[tuple[str, Layer]]]) -> dict[str, tuple[int, int]]:
    """Row ranges to read per tensor: only the rows its layers use, when every one of them is a row block (the
    value rows of a fused qkv, say); whole tensors otherwise."""
    plan = {}
    for tensor, group in groups.items():
        blocks = [layer.rows for _, layer in group]
        if all(b is not None for b in blocks):
            plan[tensor] = (min(b[0] for b in blocks), max(b[1] for b in blocks))
    return plan


def _stream(models: list[ModelSource], dist_layers: list[Layer], dir_layers: list[Layer], dist_acc: list,
            direction_acc: DirectionStats, kernel: Kernel, progress: bool, direct_io: bool = True) -> dict[int, str]:
    """One pass over the files: each tensor is read once from every model (the next one read ahead by a thread) and
    handed to the accumulators: `dist_acc` (GramSums first, which needs the batch's squared distances) take every
    distance layer, `direction_acc` every direction layer.

    Returns {model index: first tensor with NaN/Inf weights}; such a model takes no part from that tensor on.
    """
    n = len(models)
    by_tensor: dict[str, list[tuple[str, Layer]]] = {}
    for role, group in (("dist", dist_layers), ("dir", dir_layers)):
        for layer in group:
            by_tensor.setdefault(layer.tensor, []).append((role, layer))
    plan = _read_plan(by_tensor)
    bad: dict[int, str] = {}
    stack, readers = open_all(models, direct_io)
    blas = BlasThreads()
    # direction statistics run beside the Gram products (numpy and BLAS release the GIL); both only read the stack
    with stack, ThreadPoolExecutor(1, thread_name_prefix="mother-direction") as side:
        names = list(by_tensor)
        stacks = iter_stacked(readers, names, plan, prefetch=True)
        for name, x in tqdm(stacks, total=len(names), desc="weights", disable=not progress):
            for i in _nonfinite_rows(x.reshape(n, -1)):
                bad.setdefault(i, name)
            sub = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
            start = plan[name][0] if name in plan else 0
            batches = []
            for role, layer in by_tensor[name]:
                view = layer if layer.rows is None else replace(layer, rows=(layer.rows[0] - start,
                                                                             layer.rows[1] - start))
                y = view.take(x) if len(sub) == n else view.take(x)[sub]   # a view of the read buffer when all are in
                batches.append((role, LayerBatch(layer, y, sub)))
            side_work = [b for role, b in batches if role == "dir"]
            with blas.beside_side_work(bool(side_work)):
                # submitted under the limit, so the moments' BLAS calls always run at one thread count and the
                # direction scores repeat bit for bit (submitted before it, they raced the limit: ~1e-14 apart)
                done = [side.submit(direction_acc.update, b) for b in side_work]
                for role, batch in batches:
                    if role == "dist":
                        batch.d2 = pairwise_sq_dists(batch.y, kernel=kernel)
                        for acc in dist_acc:
                            acc.update(batch)
                for f in done:
                    f.result()
            del x, batches
    return bad


def _nonfinite_rows(flat: np.ndarray) -> list[int]:
    """Rows of `flat` (n, p) holding a NaN or Inf: a row sum is finite unless one is (or the sum overflows, which
    the exact check of that row then clears)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.add.reduce(flat, axis=1)
    return [int(i) for i in np.flatnonzero(~np.isfinite(sums)) if not np.isfinite(flat[i]).all()]


def exclude_models(models: list[ModelSource], bad: Mapping[int, str], same: np.ndarray, excluded: dict[str, str],
                   warnings: list[str], strict: bool, root) -> tuple[list[int], dict[str, list[str]]]:
    """Leave out models with non-finite weights, then duplicates (kept as aliases of the model they copy).

    Updates `excluded` and `warnings` in place; with `strict` any of them is an error. Returns (indices of the
    models kept, {kept id: ids of its duplicates}).
    """
    n = len(models)
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
        raise CheckpointError(f"{root}: fewer than two usable models remain after exclusions "
                              f"({len(keep)} usable); left out: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    return keep, aliases


def choose_metric(do: Mapping, l2: np.ndarray, rms: np.ndarray, ranks: RankFactors | None, keep: list[int],
                  changed_layers: int, info: dict, root, n_layers: int) -> tuple[np.ndarray, str]:
    """The distance matrix of the kept models and the metric it is ("auto" resolved by the low-rank share).

    Records the rank evidence (and the auto decision) in `info`.
    """
    metric = do["metric"]
    rank_layers = ranks.layers if ranks is not None else []
    if ranks is not None:
        shares = [s for _, _, s in rank_layers]
        evidence = {"mean_low_rank_share": float(np.mean(shares)) if shares else 0.0,
                    "rank_layers": len(rank_layers), "changed_layers": changed_layers, **ranks.stats}
        if metric == "auto":
            metric = "lora_rank" if shares and evidence["mean_low_rank_share"] >= do["low_rank_share"] else "l2"
            evidence["reason"] = (f"mean share of models whose difference from a reference is low rank = "
                                  f"{evidence['mean_low_rank_share']:.2f} (threshold {do['low_rank_share']}) -> {metric}")
            info["auto"] = evidence
        info["ranks"] = evidence
    if metric != "lora_rank":
        return (l2 if metric == "l2" else rms), metric
    kx = np.ix_(keep, keep)
    used = [(nm, r) for nm, r, s in rank_layers if ranks.counted(s)]
    if not used:
        raise CheckpointError(f"{root}: lora_rank needs 2-D layers; none among {n_layers} selected")
    info["rank_layers_used"] = [nm for nm, _ in used]
    info["rank_reduce"] = do["rank_reduce"]
    return reduce_ranks([r[kx] for _, r in used], do["rank_reduce"]), metric


def _direction_values(dvals: np.ndarray, dir_layers: list[Layer], stat: str, warnings: list[str], root
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The kept models' per-layer direction values on the layers where every one is defined, and that mask."""
    good = np.isfinite(dvals).all(axis=0)
    for k in np.flatnonzero(~good):
        warnings.append(f"direction: layer {dir_layers[k].name} left out ({stat} undefined for a constant layer)")
    if not good.any():
        raise CheckpointError(f"{root}: no layer gives a defined {stat} for every model")
    return dvals[:, good], good


def edge_relations(path, edges: list[tuple[str, str]], *, layers: Mapping = {}, rank_tol="weight",
                   low_rank_frac: float = 0.25, sources: list[ModelSource] | None = None,
                   selected: list[Layer] | None = None, evidence: RankEvidence | None = None
                   ) -> dict[tuple[str, str], str]:
    """"adapter" when the child differs from its parent by a low-rank matrix (rank <= low_rank_frac x min(shape))
    on every changed 2-D layer, else "finetune" (Hugging Face model-card vocabulary).

    `sources` / `selected` (a WeightAnalysis's) skip reading the folder again and reuse its layers. `evidence` (a
    WeightAnalysis's `rank_evidence`, from the first pass, with its rank tolerance) labels every edge whose ranks it
    holds without reading any weight; only the others are read again, with a direct SVD per edge and layer.
    """
    lo = merge_options(LayersOptions, layers, "recovery.layers")
    known: dict[tuple[str, str], str] = {}
    if evidence is not None and low_rank_frac == evidence.low_rank_frac:
        have = set(evidence.ids)
        for e in edges:
            rel = evidence.relation(*e) if e[0] in have and e[1] in have else None
            if rel is not None:
                known[tuple(e)] = rel
        edges = [e for e in edges if tuple(e) not in known]
        if not edges:
            return known
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
    return {**known, **{e: "adapter" if changed[e] and low[e] else "finetune" for e in low}}
