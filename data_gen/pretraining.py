"""Resumable root pretraining: a plain training loop whose every step is a pure function of (recipe, step).

Root pretraining is long (up to an hour per root on 2 cores), so it must survive being stopped at any time and
still give the same bits. Everything random is derived from the recipe seed and the step, never from a
stream that a restart would reset:
    - the batch of step s is slice s % E of the permutation of epoch s // E (seeded by (seed, epoch));
    - the augmentation of step s draws from a generator seeded by (seed, step).
The full training state (model, optimizer, scheduler position) is saved every `resume_every` steps as
safetensors + JSON (never pickled), so a rerun continues from the last saved step and ends bit-identical to
an uninterrupted run at the same thread count.

Outputs under `folder`:
    final.safetensors                        final weights (float32, timm names)
    checkpoints/step_<k>.safetensors         weights along pretraining (step 0 = the random init)
    state/state.safetensors + state.json     resume state (deleted when the run completes)
    curve.json                               train loss (window mean) and val accuracy / loss along the run
"""
from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common.io import atomic_write, read_json, write_json
from common.seed import derive_seed, seed_everything
from data_gen.finetune import augment_batch, resolve_recipe
from data_gen.models import Preprocess, classifier_name, create_model, save_weights, trainable_state

log = logging.getLogger("mother.data_gen")


def lr_factor(step: int, *, warmup: int, total: int, scheduler: str, final: float = 0.0) -> float:
    """Learning-rate multiplier at `step`: linear warmup, then constant or cosine down to `final`."""
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "cosine":
        t = min(step - warmup, total) / max(total - warmup, 1)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def make_optimizer(params: list[torch.nn.Parameter], r: Mapping) -> torch.optim.Optimizer:
    """The recipe's optimizer over `params`."""
    if r["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
    cls = torch.optim.AdamW if r["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=r["lr"], weight_decay=r["weight_decay"])


@functools.lru_cache(maxsize=1)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "shuffle", epoch)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of step `step`'s batch: slice of the seeded permutation of its epoch (last partial batch dropped)."""
    epoch, k = divmod(step, n // batch_size)
    return _epoch_permutation(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]


# ----------------------------------------------------------------------------------------- resume state

def _save_state(folder: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                record: Mapping[str, Any]) -> None:
    """Atomically save model + optimizer tensors (safetensors) and the scalars (JSON) at `step`."""
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{idx}.{name}"] = t.detach().contiguous().clone()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    write_json(folder / "state.json", {**record, "step": step, "param_groups": sd["param_groups"]})


def _load_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a saved state into model and optimizer; returns its JSON record (with "step")."""
    record = read_json(folder / "state.json")
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record


# ------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: torch.nn.Module, preprocess: Preprocess, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on uint8 images x with labels y."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        logits = model(preprocess(x[i:i + batch_size]))
        correct += int((logits.argmax(-1) == y[i:i + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[i:i + batch_size], reduction="sum"))
    model.train(was_training)
    return correct / len(y), loss / len(y)


@torch.no_grad()
def mean_kurtosis(tensors: Iterable[tuple[str, torch.Tensor]], heads: tuple[str, ...]) -> float:
    """Mean excess kurtosis over 2-D+ weights, heads (name prefixes) excluded (paper Fig. 2: rises in pretraining)."""
    vals = []
    for name, w in tensors:
        if w.ndim >= 2 and not name.startswith(tuple(h + "." for h in heads)):
            z = w.detach().double().flatten()
            z = (z - z.mean()) / z.std()
            vals.append(float((z ** 4).mean() - 3))
    return sum(vals) / len(vals)


def plateau_drop(curve: Mapping[str, list], key: str = "train_loss") -> float:
    """Relative drop of `key` (train_loss: issue 14's plateau target, < 2%; or val_loss) over the last 20% of a
    recorded curve."""
    steps, loss = curve["step"], curve[key]
    ref = next((v for s, v in zip(reversed(steps), reversed(loss)) if s <= 0.8 * steps[-1]), loss[0])
    return float((ref - loss[-1]) / ref)


# ------------------------------------------------------------------------------------------------ train

def pretrain(*, arch: str, task, recipe: Mapping, folder: Path, checkpoint_every: int, eval_every: int,
             resume_every: int | None = None, num_threads: int | None = None, progress: bool = True,
             arch_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain `arch` from its seeded random init on `task` (resuming from `folder/state` when present).

    Args:
        arch: built-in or timm architecture name.
        task: a `data_gen.tasks.TaskData`.
        recipe: a `data_gen.finetune` recipe (full fine-tuning keys; `max_steps` sets the run length) plus
            optional "final_lr" (cosine floor as a fraction of lr).
        folder: output folder (see module docstring).
        checkpoint_every: keep the weights every N steps (and at step 0).
        eval_every: evaluate on the validation split every N steps (and at the end).
        resume_every: save the resume state every N steps (default: checkpoint_every); a multiple of eval_every.
        num_threads: torch threads (bit-identity holds per thread count; recorded).
        progress: log a progress line (logger mother.data_gen, INFO) at each evaluation.
        arch_kwargs: extra constructor arguments of `arch` (e.g. embed_dim).

    Returns:
        {"steps", "val_accuracy", "val_loss", "final_loss", "train_seconds", "num_threads", "resumed_from",
         "curve"}.
    """
    r = dict(recipe)
    final_lr = float(r.pop("final_lr", 0.0))
    r = resolve_recipe(r)
    folder = Path(folder)
    total = int(r["max_steps"])
    resume_every = int(resume_every or checkpoint_every or eval_every)
    if resume_every % eval_every:
        raise ValueError(f"resume_every ({resume_every}) must be a multiple of eval_every ({eval_every})")
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        seed = int(r["seed"])
        seed_everything(seed)
        model = create_model(arch, task.num_classes, **dict(arch_kwargs or {}))
        preprocess = Preprocess.for_model(model)
        opt = make_optimizer(list(model.parameters()), r)
        base_lrs = [g["lr"] for g in opt.param_groups]
        meta = {"arch": arch, "node_id": folder.name, "task": str(task.name), "method": "full"}
        ident = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "recipe": r, "final_lr": final_lr,
                 "task": str(task.name), "n_train": len(task.y_train)}
        curve: dict[str, list] = {"step": [], "train_loss": [], "val_accuracy": [], "val_loss": [], "kurtosis": []}
        start, resumed_from, seconds = 0, None, 0.0
        state_dir = folder / "state"
        if (state_dir / "state.json").is_file():
            record = read_json(state_dir / "state.json")
            if record.get("ident") != ident:
                raise ValueError(f"{state_dir}: resume state was made by another recipe/arch/task; delete the "
                                 f"folder {folder} to start over")
            record = _load_state(state_dir, model, opt)
            start = resumed_from = int(record["step"])
            curve, seconds = record["curve"], float(record["train_seconds"])
        elif checkpoint_every:
            save_weights(folder / "checkpoints" / "step_0.safetensors", trainable_state(model), {**meta, "step": 0})
        n, bs = len(task.y_train), int(r["batch_size"])
        if n < bs:
            raise ValueError(f"{task.name}: {n} training images, fewer than one batch of {bs}")
        model.train()
        window: list[float] = []
        t0 = time.perf_counter()
        for step in range(start, total):
            f = lr_factor(step, warmup=int(r["warmup_steps"]), total=total, scheduler=r["scheduler"], final=final_lr)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            idx = batch_indices(step, n, bs, seed)
            x, y = task.x_train[idx], task.y_train[idx]
            if r["augment"]:
                x = augment_batch(x, r["augment"], torch.Generator().manual_seed(derive_seed(seed, "augment", step)))
            loss = F.cross_entropy(model(preprocess(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(loss.item())
            done = step + 1
            if done % eval_every == 0 or done == total:
                acc, vloss = evaluate(model, preprocess, task.x_val, task.y_val)
                for key, v in (("step", done), ("train_loss", sum(window) / len(window)),
                               ("val_accuracy", acc), ("val_loss", vloss),
                               ("kurtosis", mean_kurtosis(model.named_parameters(), (classifier_name(model),)))):
                    curve.setdefault(key, []).append(v)
                window = []
                if progress:
                    log.info("%s step %d/%d train_loss %.4f val_acc %.4f val_loss %.4f (%.3f s/step)", folder.name,
                             done, total, curve["train_loss"][-1], acc, vloss, (time.perf_counter() - t0) / (done - start))
            if checkpoint_every and done % checkpoint_every == 0:
                save_weights(folder / "checkpoints" / f"step_{done}.safetensors", trainable_state(model),
                             {**meta, "step": done})
            if done % resume_every == 0 and done < total:
                _save_state(state_dir, done, model, opt, {"ident": ident, "curve": curve,
                            "train_seconds": seconds + time.perf_counter() - t0})
        seconds += time.perf_counter() - t0
        save_weights(folder / "final.safetensors", trainable_state(model), {**meta, "step": total})
        write_json(folder / "curve.json", curve)
        for name in ("state.safetensors", "state.json"):
            (state_dir / name).unlink(missing_ok=True)
        if state_dir.is_dir():
            state_dir.rmdir()
        return {"steps": total, "val_accuracy": curve["val_accuracy"][-1], "val_loss": curve["val_loss"][-1],
                "final_loss": curve["train_loss"][-1], "train_seconds": seconds,
                "num_threads": torch.get_num_threads(), "resumed_from": resumed_from, "curve": curve}
    finally:
        torch.set_num_threads(old_threads)
