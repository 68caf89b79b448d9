"""Scale ladder: where does MoTHer's premise appear as the models grow?

Each rung is a built-in ViT width (`vit_mini_d<W>`) and a pretraining length. Per rung: pretrain a root on the
pretraining mix with the resumable loop (data_gen.pretraining), build the FT and LoRA probe trees from it (the
mini graph configs with this root; LoRA ranks scaled with the width, as lora_v_mini scales Table 3's), then
report the calibration measures (analysis.experiments.calibration) and the paper's recovery accuracy per rung.
Recovery accuracy is reported, never used to choose anything here.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.experiments import experiment
from analysis.experiments.calibration import _num, graph_measures, val_loss_drop
from analysis.graphs import ensure_graph
from analysis.premises import DIRECTION_ROOM_NOTE
from analysis.recover import accuracy_run
from analysis.report import knobs, run_experiment, save_figure, write_table
from common.io import jsonable, read_json, write_json
from common.seed import derive_seed

NAME = "scale_ladder"
log = logging.getLogger("mother.analysis")


def builtin_rung_root(cfg: DictConfig, label: str, rung: Mapping) -> dict[str, Any]:
    """A rung whose root is a shipped built-in root (`builtin: NAME`): its record, nothing trained.

    Its probe trees name the root `builtin:NAME` (`source`), as the mini graphs do, not the file's path: a path
    would tie the trees' records and root copies to where the checkout lives, and a moved checkout would rebuild
    them."""
    from analysis.finetunes import roots_cache
    from data_gen.roots import ensure_root, root_record

    name = str(rung["builtin"])
    weights = ensure_root(name, cache_dir=roots_cache(cfg))
    rec = root_record(name, cache_dir=roots_cache(cfg))
    return {"label": label, "arch": rec["arch"], "width": int(rung["width"]), "steps": rec["steps"],
            "recipe": rec["recipe"], "mix": rec["data"], "val_accuracy": rec["val_accuracy"],
            "val_loss": rec["val_loss"], "plateau_drop": rec["plateau_drop"], "train_seconds": rec["train_seconds"],
            "num_threads": rec["num_threads"], "weights": str(weights), "source": f"builtin:{name}", "builtin": name,
            "curve": rec["curve"]}


def rung_recipe(cfg: DictConfig, rung: Mapping, k: DictConfig) -> tuple[str, str, dict, dict]:
    """(arch, pretraining mix, recipe, {n_train, n_val}) of a rung that pretrains its root.

    `{width, steps, lr?}`: the ladder's own recipe (`pretrain`, `mix`; `lr` replaces its learning rate) on
    `vit_mini_d<width>`, seeded by the ladder.
    `{width, like: NAME, steps}`: built-in root NAME's architecture, mix, recipe and seed with another length, i.e.
    the same run as the shipped root but for its number of steps (e.g. twice as long: does it plateau?).
    """
    if rung.get("like"):
        from data_gen.models import BUILTIN_ARCHS
        from data_gen.roots import RECIPES, spec, train_recipe

        name = str(rung["like"])
        base = RECIPES[spec(name).recipe]
        width = BUILTIN_ARCHS.get(spec(name).arch, {}).get("embed_dim")
        if width != int(rung["width"]):
            raise ValueError(f"scale_ladder rung like {name}: width {rung['width']} is not {name}'s ({width})")
        return (spec(name).arch, str(base["data"]), {**train_recipe(name), "max_steps": int(rung["steps"])},
                {"n_train": int(base["n_train"]), "n_val": int(base["n_val"])})
    recipe = {**OmegaConf.to_container(k.pretrain, resolve=True), "max_steps": int(rung["steps"]),
              "seed": derive_seed(cfg.seed, NAME, "root", int(rung.get("seed", 1)))}
    if rung.get("lr") is not None:   # a rung's own learning rate (wider models need smaller Adam steps)
        recipe["lr"] = float(rung["lr"])
    return (f"vit_mini_d{int(rung['width'])}", str(k.mix), recipe,
            {"n_train": int(k.n_train), "n_val": int(k.n_val)})


def rung_root(cfg: DictConfig, label: str, rung: Mapping, k: DictConfig) -> dict[str, Any]:
    """Pretrain (or reuse, or resume) the root of one rung; returns its record with the weights path."""
    from analysis.finetunes import load_task_data
    from data_gen.pretraining import plateau_drop, pretrain

    if rung.get("builtin"):
        return builtin_rung_root(cfg, label, rung)
    arch, mix, recipe, sizes = rung_recipe(cfg, rung, k)
    folder = Path(cfg.analysis.work_dir) / NAME / "roots" / label
    record = folder / "root.json"
    if _trained(folder, recipe):
        return read_json(record)
    task = load_task_data(cfg, mix, seed=0, **sizes)
    res = pretrain(arch=arch, task=task, recipe=recipe, folder=folder, checkpoint_every=int(rung["steps"]),
                   eval_every=int(k.eval_every), resume_every=int(k.eval_every), num_threads=cfg.get("num_threads"),
                   progress=True)
    curve = res["curve"]
    rec = {"label": label, "arch": arch, "width": int(rung["width"]), "steps": res["steps"], "recipe": recipe,
           "mix": mix, "like": rung.get("like"), "val_accuracy": res["val_accuracy"], "val_loss": res["val_loss"],
           "plateau_drop": plateau_drop(curve), "train_seconds": res["train_seconds"],
           "num_threads": res["num_threads"], "weights": str(folder / "final.safetensors"), "curve": curve}
    write_json(record, rec)
    return rec


def _trained(folder: Path, recipe: Mapping) -> bool:
    """A rung root already pretrained with `recipe` in `folder` (its record and final weights)."""
    record = folder / "root.json"
    return record.is_file() and read_json(record).get("recipe") == recipe and (folder / "final.safetensors").is_file()


def _log_like(level: int) -> None:
    """A spawned pretraining process logs its progress lines (pretrain's every eval_every steps) to stderr."""
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def pretrain_rungs(cfg: DictConfig, k: DictConfig) -> list[str]:
    """Pretrain the rungs' roots not yet trained side by side: one spawned process per worker
    (`data_gen.workers`, auto: cores // num_threads), each at `num_threads`, so a root's weights are the ones a lone
    run gives. Returns the labels trained here (none with one worker: `compute` trains them in turn)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from data_gen.workers import resolve_workers

    todo = [label for label, rung in k.rungs.items() if not rung.get("builtin")
            and not _trained(Path(cfg.analysis.work_dir) / NAME / "roots" / label, rung_recipe(cfg, rung, k)[2])]
    # longest first (a step costs ~width^2), so the last root to finish is a short one
    todo.sort(key=lambda label: -int(k.rungs[label]["steps"]) * int(k.rungs[label]["width"]) ** 2)
    threads = int(cfg.get("num_threads") or 1)
    workers = min(len(todo), resolve_workers(cfg.data_gen.get("workers", "auto") if "data_gen" in cfg else 1, threads))
    if workers <= 1:
        return []
    log.info("%s: pretraining %d rung roots, %d at a time: %s", NAME, len(todo), workers, todo)
    # resolved here: a spawned process has no Hydra context for ${hydra:...} interpolations
    plain, kp = (OmegaConf.create(OmegaConf.to_container(c, resolve=True)) for c in (cfg, k))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_log_like,
                             initargs=(logging.getLogger("mother").getEffectiveLevel(),)) as pool:
        futures = [pool.submit(rung_root, plain, label, kp.rungs[label], kp) for label in todo]
        for future in as_completed(futures):
            future.result()
    return todo


def probe_spec(rung_label: str, root: Mapping, probe: Mapping, width: int, root_id: str) -> tuple[str, dict]:
    """(data_gen config name, overrides) of one probe tree grown from a rung's root.

    Every rung names its probe root `root_id`: a node's draws (task, lr, epochs, rank) are seeded by the graph seed
    and its node id, so the rungs' trees share every draw and differ only in the root they grow from.
    """
    overrides = dict(probe.get("overrides") or {})
    overrides["name"] = f"{NAME}_{rung_label}_{probe['name']}"
    source = root.get("source", root["weights"])   # builtin:NAME, or the trained rung's weights file
    overrides["roots"] = [{"id": root_id, "source": source, "arch": root["arch"], "task": root["mix"]}]
    scale = probe.get("rank_scale_width")
    if scale:  # LoRA ranks / alphas scale with the width (lora_v_mini: Table 3's ranks / 8 at width 64)
        factor = max(1, width // int(scale))
        lora = dict(overrides.get("methods", {}).get("lora", {}))
        for key, base in (("lora_rank", probe["ranks"]), ("lora_alpha", probe["ranks"])):
            lora[key] = {"choices": [int(r) * factor for r in base]}
        overrides.setdefault("methods", {})["lora"] = lora
    return str(probe["data_gen"]), overrides


def check_labels(labels, root_id: str = "probe") -> None:
    """Rung labels name the probe graphs and their folders, `root_id` their roots: check them before any root is
    pretrained (hours)."""
    from data_gen.spec import ROOT_ID

    bad = [str(label) for label in labels if not ROOT_ID.match(str(label))]
    if bad:
        raise ValueError(f"analysis.scale_ladder.rungs: labels {bad} must match {ROOT_ID.pattern} (they name the "
                         "probe graphs and their folders; no '-' or '/')")
    if not ROOT_ID.match(str(root_id)):
        raise ValueError(f"analysis.scale_ladder.probe_root_id {root_id!r} must match {ROOT_ID.pattern} (a root id)")


def compute(cfg: DictConfig) -> dict:
    k = knobs(cfg, NAME)
    check_labels(k.rungs, str(k.probe_root_id))
    pretrain_rungs(cfg, k)
    rungs = {}
    for label, rung in k.rungs.items():
        root = rung_root(cfg, label, rung, k)
        probes = {}
        for probe in k.probes:
            probe = OmegaConf.to_container(probe, resolve=True)
            name, overrides = probe_spec(label, root, probe, int(rung["width"]), str(k.probe_root_id))
            graph_dir = ensure_graph(cfg, name, **overrides)
            spec = {"graph": {"path": str(graph_dir)}, "recovery": probe.get("recovery")}
            measures = graph_measures(cfg, probe["name"], spec, k)
            measures.pop("root_vectors", None)
            acc = accuracy_run(cfg, probe["name"], {"path": str(graph_dir)}, probe.get("recovery"))
            probes[probe["name"]] = {**measures, "edge_accuracy": acc["edge_accuracy"],
                                     "undirected_accuracy": acc["undirected_accuracy"]}
        rungs[label] = {"root": {kk: v for kk, v in root.items() if kk != "curve"}, "curve": root["curve"],
                        "probes": probes}
        log.info("%s: rung %d/%d done: %s", NAME, len(rungs), len(k.rungs), rung_line(label, rungs[label]))
    return jsonable({"rungs": rungs})


def _lr_cell(lr) -> str:
    """A learning rate in full (0.0005; the tables' 3 decimals would round it to 0.001)."""
    v = _num(lr)
    return "n/a" if math.isnan(v) else f"{v:g}"


def render(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    rows = []
    for label, r in results["rungs"].items():
        for probe, p in r["probes"].items():
            rows.append({"rung": label, "width": r["root"]["width"], "pretrain steps": r["root"]["steps"],
                         "pretrain lr": _lr_cell((r["root"].get("recipe") or {}).get("lr")),
                         "root val acc": _num(r["root"]["val_accuracy"]),
                         "root val loss drop": val_loss_drop(r.get("curve")), "probe": probe, "distance": p["metric"],
                         "median val acc": _num(p["median_accuracy"]), "edge max/min": _num(p["edge_spread"]),
                         "Fig. 1 rho": _num(p["rho"]),
                         "rho ceiling": _num(p.get("rho_ceiling")), "path rho": _num(p["rho_path"]),
                         "same-task closer": _num(p["same_task_closer"]),
                         "nearest is parent/child": _num(p["nearest_is_neighbour"]),
                         "kurtosis falls": _num(p["kurtosis_falls"]),
                         "root kurtosis/layer": _num(p.get("root_direction")),
                         "median fall/layer": _num(p.get("direction_drop")), "edge accuracy (paper's method)":
                         _num(p["edge_accuracy"]), "undirected": _num(p["undirected_accuracy"])})
    frame = pd.DataFrame(rows)
    write_table(frame, out_dir, NAME, caption=f"Scale ladder: regime measures and recovery per rung; {DIRECTION_ROOM_NOTE}")
    probes = sorted(set(frame["probe"])) if len(frame) else []
    panels = (("median val acc", "median fine-tune val acc; black: the root's on its mix"),
              ("Fig. 1 rho", "Fig. 1 rho (paper 0.99); dashed: what the edge sizes allow"),
              ("same-task closer", "same-task pairs closer than the median edge"),
              ("root kurtosis/layer", "root kurtosis per layer its direction reads (Gaussian: 3)"),
              ("kurtosis falls", "edges where kurtosis falls (direction)"),
              ("edge accuracy (paper's method)", "edge accuracy, paper's method"))
    fig, grid = plt.subplots(2, 3, figsize=(16, 8), layout="constrained")
    axes = list(grid.flat)
    for probe in probes:
        sub = frame[frame["probe"] == probe]
        x = list(sub["rung"])   # rung labels: two rungs may share a width and length (e.g. another lr)
        lines = [ax.plot(x, sub[column], "o-", label=probe)[0] for ax, (column, _) in zip(axes, panels)]
        axes[1].plot(x, sub["rho ceiling"], "--", color=lines[1].get_color(), alpha=0.6, label=f"{probe} ceiling")
    if probes:
        roots = frame.drop_duplicates("rung")
        axes[0].plot(list(roots["rung"]), roots["root val acc"], "s:", color="black", label="root")
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    for ax in grid[-1]:
        ax.set_xlabel("rung (d<width>_s<pretraining steps>)")
    if probes:   # one legend for every panel, outside the data
        handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    save_figure(fig, out_dir, NAME)


def rung_line(label: str, r: Mapping) -> str:
    """One rung's root and probes in a line (the record's summary; logged as each rung finishes)."""
    ps = ", ".join(f"{p}: rho {_num(v['rho']):.2f} (path {_num(v['rho_path']):.2f}), acc "
                   f"{_num(v['median_accuracy']):.2f}, edges "
                   f"{_num(v['edge_accuracy']):.2f}" for p, v in r["probes"].items())
    return (f"{label} (root acc {_num(r['root']['val_accuracy']):.2f}, its val loss still falling "
            f"{100 * val_loss_drop(r.get('curve')):.1f}% over its last 20% of steps): {ps}")


def describe(results: dict) -> dict:
    parts = [rung_line(label, r) for label, r in results["rungs"].items()]
    return {"title": "Scale ladder: where MoTHer's premise appears as models grow", "ours": "; ".join(parts),
            "notes": "Not in the paper. Recovery accuracy is reported per rung and chooses nothing.",
            "paper": "ViT-B (86M parameters): Fig. 1 rho 0.99"}


@experiment(NAME, order=190, recovers=True)
def run(cfg: DictConfig) -> dict:
    return run_experiment(cfg, NAME, compute, render, describe)

