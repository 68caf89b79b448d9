"""Fine-tune one model (full or LoRA) with a LightningModule and pl.Trainer, and save its merged weights.

`finetune` is a pure function of (arch, parent weights, task, recipe, thread count): same inputs give
bit-identical weights on CPU. Outputs, all written atomically under `out_dir`:
    models/<node_id>.safetensors             merged full weights, float32, timm tensor names
    adapters/<node_id>/                      LoRA only: the peft adapter (adapter_model.safetensors + config)
    checkpoints/<node_id>/step_<k>.safetensors   with checkpoint_every=N: merged weights at steps 0, N, 2N, ...
The classification head is always replaced by a fresh one (seeded) for `task.num_classes`, and is trained
for LoRA too. LoRA targets are module-name patterns matched against Linear/Conv2d modules: an exact name, a
dotted suffix ("qkv" matches "blocks.0.attn.qkv") or an fnmatch glob ("blocks.*.mlp.fc?"). timm's fused
`qkv` Linear is adapted as one module, so its merged delta (the stacked q, k, v update) has rank <= r.
With LoRA every other parameter stays the parent's; BatchNorm running statistics (buffers, not parameters)
still follow the new task's data, as the model trains in train mode.

Devices (`resolve_trainer`): `accelerator` cpu | gpu | auto (a GPU when one is visible), one device per fine-tune,
`precision` 32-true | bf16-mixed | 16-mixed | auto (bf16-mixed on a GPU that has bf16, else 16-mixed; 32-true on
CPU). Mixed precision keeps float32 master weights, and the saved weights are float32 whatever the precision.
On CPU, training is deterministic; on a GPU, Lightning warns about ops without a deterministic kernel instead of
failing on them.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.errors import ConfigError
from common.io import new_file_mode, sha256_file
from common.schema import merge_options
from common.seed import derive_seed, seed_everything
from data_gen.config import Recipe
from data_gen.models import (Preprocess, classifier_name, create_model, load_init_state, save_weights,
                             trainable_state)

ACCELERATORS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "mps": "mps"}
PRECISIONS = {"32-true": "32-true", "32": "32-true", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
              "16-mixed": "16-mixed", "16": "16-mixed"}


def resolve_trainer(accelerator: str = "auto", devices: int | str = 1,
                    precision: str | None = "auto") -> dict[str, Any]:
    """Concrete Lightning options for one fine-tune: {"accelerator", "devices", "precision"}.

    Args:
        accelerator: "auto" (a CUDA GPU when one is visible, else the CPU), "cpu", "gpu" (or "cuda"), "mps".
        devices: devices per fine-tune; only 1 (or "auto", meaning 1): graph builds run one node per device and
            parallelise over nodes (worker processes, SLURM array tasks), never one node over several devices.
        precision: "auto" / None (bf16-mixed on a GPU with bf16 support, 16-mixed on an older GPU, else 32-true),
            or one of PRECISIONS.

    Raises:
        ValueError: an unknown value, a GPU asked for where none is visible, or devices other than 1.
    """
    acc = str(accelerator).lower()
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc not in ACCELERATORS:
        raise ValueError(f"accelerator {accelerator!r}: use auto, cpu, gpu (cuda) or mps")
    acc = ACCELERATORS[acc]
    if acc == "gpu" and not torch.cuda.is_available():
        raise ValueError("accelerator=gpu but torch sees no CUDA GPU here (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use accelerator=auto or cpu")
    if str(devices) not in ("1", "auto"):
        raise ValueError(f"devices={devices!r}: one fine-tune trains on one device; a graph build runs nodes side by "
                         "side instead (data_gen.workers, one GPU each, or one SLURM array task per node)")
    if precision in (None, "auto"):
        if acc == "gpu":
            prec = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            prec = "32-true"
    elif str(precision) in PRECISIONS:
        prec = PRECISIONS[str(precision)]
    else:
        raise ValueError(f"precision {precision!r}: use auto or one of {sorted(set(PRECISIONS.values()))}")
    return {"accelerator": acc, "devices": 1, "precision": prec}


def resolve_recipe(recipe: Mapping) -> dict[str, Any]:
    """Recipe with defaults filled in (data_gen.config.Recipe); unknown keys and bad values are errors (they would
    be silently ignored)."""
    r = merge_options(Recipe, recipe, "recipe")
    r["lora_targets"] = [r["lora_targets"]] if isinstance(r["lora_targets"], str) else list(r["lora_targets"])
    r["augment"] = [r["augment"]] if isinstance(r["augment"], str) else list(r["augment"])
    if not set(r["augment"]) <= {"flip", "crop"}:
        raise ConfigError(f"recipe.augment may hold 'flip' and 'crop', got {r['augment']}")
    return r


# ------------------------------------------------------------------------------------------ model side

def augment_batch(x: torch.Tensor, kinds: list[str], generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip / pad-4 random crop of a uint8 batch, drawn from `generator` (deterministic)."""
    n = x.shape[0]
    if "flip" in kinds:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    if "crop" in kinds:
        pad, (h, w) = 4, x.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        x = torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])
    return x


class Classifier(pl.LightningModule):
    """Cross-entropy training of `model` on uint8 image batches, normalised by `preprocess`."""

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, recipe: Mapping, total_steps: int):
        super().__init__()
        self.model, self.preprocess, self.recipe, self.total_steps = model, preprocess, dict(recipe), total_steps
        self.aug_generator = torch.Generator().manual_seed(derive_seed(recipe["seed"], "augment"))
        self.val_accuracy: float | None = None
        self.last_loss: float | None = None
        self._correct = self._seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.recipe["augment"]:
            x = augment_batch(x, self.recipe["augment"], self.aug_generator)
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        return loss

    def on_train_end(self) -> None:
        metric = self.trainer.callback_metrics.get("train/loss")
        self.last_loss = None if metric is None else float(metric)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._correct += int((self(x).argmax(-1) == y).sum())
        self._seen += len(y)

    def on_validation_epoch_end(self) -> None:
        self.val_accuracy = self._correct / max(self._seen, 1)
        self._correct = self._seen = 0
        self.log("val/acc", self.val_accuracy, prog_bar=True)

    def configure_optimizers(self):
        r = self.recipe
        params = [p for p in self.model.parameters() if p.requires_grad]
        if r["optimizer"] == "sgd":
            opt = torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
        else:
            cls = torch.optim.AdamW if r["optimizer"] == "adamw" else torch.optim.Adam
            opt = cls(params, lr=r["lr"], weight_decay=r["weight_decay"])
        warmup, total = int(r["warmup_steps"]), max(self.total_steps, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if r["scheduler"] == "cosine":
                return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / max(total - warmup, 1)))
            return 1.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def match_targets(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Full names of the Linear/Conv2d modules matching any pattern (exact, dotted suffix, or fnmatch glob).

    Raises:
        ValueError: a pattern matches no module (names a few candidates).
    """
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    out = []
    for p in patterns:
        hits = [n for n in layers if n == p or n.endswith("." + p) or fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ValueError(f"LoRA target {p!r} matches no Linear/Conv2d module of {type(model).__name__}; "
                             f"e.g. {layers[:6]}")
        out += [n for n in hits if n not in out]
    return out


def _matrix_shape(module: torch.nn.Module) -> tuple[int, int]:
    """(out, in) of a LoRA target's weight as a matrix (a convolution's in: channels x kernel positions)."""
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def lora_targets(model: torch.nn.Module, recipe: Mapping, head: str) -> list[str]:
    """The modules LoRA adapts (the recipe's lora_targets, the head excluded); a ConfigError when none is left, or
    when lora_rank exceeds the narrowest one's width (the "low-rank" delta would be full rank: a full fine-tune)."""
    targets, narrow, shape = _narrowest(model, list(recipe["lora_targets"]), head)
    _check_rank(int(recipe["lora_rank"]), narrow, shape)
    return targets


def check_lora_fits(arch: str, targets: list[str], rank: int) -> None:
    """lora_targets' checks on a fresh `arch` model, before anything trains (built once per arch and targets)."""
    _check_rank(int(rank), *_fresh_narrowest(arch, tuple(targets)))


@functools.lru_cache(maxsize=8)
def _fresh_narrowest(arch: str, targets: tuple[str, ...]) -> tuple[str, tuple[int, int]]:
    model = create_model(arch, num_classes=2)
    return _narrowest(model, list(targets), classifier_name(model))[1:]


def _narrowest(model: torch.nn.Module, patterns: list[str], head: str) -> tuple[list[str], str, tuple[int, int]]:
    """(LoRA target modules, the narrowest one, its weight's matrix shape); the head is not a target."""
    targets = [n for n in match_targets(model, patterns) if not n.startswith(head)]
    if not targets:
        raise ConfigError(f"recipe.lora_targets {patterns} match only the classifier head {head!r} "
                          f"(trained fully anyway); name the layers LoRA should adapt")
    modules = dict(model.named_modules())
    narrow = min(targets, key=lambda n: min(_matrix_shape(modules[n])))
    return targets, narrow, _matrix_shape(modules[narrow])


def _check_rank(rank: int, narrow: str, shape: tuple[int, int]) -> None:
    if rank > min(shape):
        raise ConfigError(f"recipe.lora_rank={rank} exceeds the width of {narrow} (weight as a matrix "
                          f"{shape[0]}x{shape[1]}); choose lora_rank <= {min(shape)}")


def add_lora(model: torch.nn.Module, recipe: Mapping, head: str) -> torch.nn.Module:
    """Wrap `model` with peft LoRA on the recipe's targets; the head is trained fully (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, recipe, head)
    alpha = float(recipe["lora_alpha"])
    config = LoraConfig(r=int(recipe["lora_rank"]), lora_alpha=int(alpha) if alpha.is_integer() else alpha,
                        lora_dropout=float(recipe["lora_dropout"]), target_modules=targets,
                        modules_to_save=[head], bias="none")
    return get_peft_model(model, config)


def merged_state(model: torch.nn.Module, method: str) -> dict[str, torch.Tensor]:
    """Full weights with timm names: for LoRA, a merged copy (the training model is left untouched)."""
    if method == "lora":
        model = copy.deepcopy(model).merge_and_unload()
    return trainable_state(model)


class StepCheckpoints(pl.Callback):
    """Save the (merged) weights at steps 0, N, 2N, ... as `folder/step_<k>.safetensors`."""

    def __init__(self, every: int, folder: Path, method: str, metadata: dict[str, Any]):
        self.every, self.folder, self.method, self.metadata = every, folder, method, metadata
        self.paths: list[Path] = []

    def _save(self, module: Classifier, step: int) -> None:
        path = self.folder / f"step_{step}.safetensors"
        self.paths.append(save_weights(path, merged_state(module.model, self.method),
                                       {**self.metadata, "step": step}))

    def on_train_start(self, trainer: pl.Trainer, module: Classifier) -> None:
        self._save(module, 0)

    def on_train_batch_end(self, trainer: pl.Trainer, module: Classifier, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._save(module, trainer.global_step)


class TrainTimer(pl.Callback):
    """Wall time of the training steps only (first batch start to last batch end), and of the steps after the
    first (which pays for lazy set-up: kernel selection, allocator warm-up)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.first_end: float | None = None
        self.batches = 0

    def on_train_batch_start(self, *args: Any) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":  # kernels run asynchronously: time them finished
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.end = time.perf_counter()
        self.batches += 1
        if self.first_end is None:
            self.first_end = self.end

    @property
    def seconds(self) -> float:
        return 0.0 if self.start is None or self.end is None else self.end - self.start

    @property
    def step_seconds(self) -> float | None:
        """Mean time of a training step after the first (None with fewer than 2 steps)."""
        if self.batches < 2 or self.end is None or self.first_end is None:
            return None
        return (self.end - self.first_end) / (self.batches - 1)


def build_loggers(logger_cfg: Mapping | None, node_id: str) -> list:
    """Lightning loggers from the `logger:` dict of conf/logger/*.yaml, one run/version per node."""
    if not logger_cfg:
        return []
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(logger_cfg, DictConfig):
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
    loggers = []
    for key, cfg in logger_cfg.items():
        if not cfg:
            continue
        cfg = dict(cfg)
        if "_target_" not in cfg:
            raise ValueError(f"logger {key!r} has no _target_: {cfg}")
        if cfg["_target_"].endswith("WandbLogger"):
            cfg["name"] = f"{cfg.get('name') or 'finetune'}/{node_id}"
        else:
            cfg["version"] = node_id
        loggers.append(instantiate(cfg))
    return loggers


def _finish_loggers(loggers: list) -> None:
    """End per-node runs (a WandbLogger's run stays open across Trainers otherwise)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None) -> DataLoader:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=seed is not None, generator=generator,
                      num_workers=0)


# Lightning's own info lines (device summary, its litlogger tip, "`Trainer.fit` stopped: `max_steps=N` reached.")
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


@contextlib.contextmanager
def lightning_info(show: bool):
    """Lightning's per-Trainer INFO lines shown (show=True) or held back to WARNING and above (warnings still show).

    A graph build runs one Trainer per node under its own progress bar, where three such lines per node would
    bury it; the device used is in each node's record (`accelerator`, `device_name`).
    """
    if show:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _plain_adapter_files(folder: Path) -> None:
    """A saved adapter as plain files: target_modules in sorted order (peft writes a set's order, which varies
    between runs) and the modes a plain open() gives (mkdtemp's folder is 0700)."""
    config = folder / "adapter_config.json"
    if config.is_file():
        doc = json.loads(config.read_text())
        if isinstance(doc.get("target_modules"), list):
            doc["target_modules"] = sorted(doc["target_modules"])
            config.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    mode = new_file_mode()
    dir_mode = mode | (mode & 0o444) >> 2   # x where r
    for f in folder.rglob("*"):
        os.chmod(f, dir_mode if f.is_dir() else mode)
    os.chmod(folder, dir_mode)


def _save_adapter(peft_model: torch.nn.Module, folder: Path) -> Path:
    """Write the peft adapter into a temporary folder, then move it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        _plain_adapter_files(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def finetune(*, arch: str, init_state: dict[str, torch.Tensor] | None, task, recipe: Mapping,
             out_dir: Path, node_id: str, logger_cfg: Mapping | None = None,
             checkpoint_every: int | None = None, num_threads: int | None = None,
             progress: bool = True, accelerator: str = "auto", devices: int | str = 1,
             precision: str | None = "auto", save_adapter: bool = True) -> dict:
    """Train `arch` from `init_state` on `task` with `recipe`; save merged weights as out_dir/models/<node_id>.

    Args:
        arch: model architecture (see `data_gen.models.create_model`).
        init_state: parent weights (timm names); None trains from a seeded random init (root pretraining).
        task: a `data_gen.tasks.TaskData` (uint8 images, int64 labels).
        recipe: training recipe (keys and defaults: `data_gen.config.Recipe`).
        out_dir: graph folder; outputs go to models/, adapters/, checkpoints/ below it.
        node_id: file stem of this node's outputs.
        logger_cfg: the `logger:` dict of conf/logger/*.yaml (None: no experiment logger).
        checkpoint_every: also save merged weights every N optimizer steps (and at step 0).
        num_threads: torch threads for this call (restored afterwards); bit-identity holds per thread count.
        progress: show Lightning's progress bar and its info lines (device summary, stop reason).
        accelerator, devices, precision: Lightning options, see `resolve_trainer` (determinism is promised on CPU,
            where "auto" gives the Trainer of earlier versions: cpu, 1 device, 32-true).
        save_adapter: for LoRA, also save the peft adapter.

    Returns:
        {"val_accuracy", "weights", "sha256", "steps", "seconds", "adapter", "train_seconds", "step_seconds" (mean
         step time after the first), "final_loss", "num_threads", "checkpoints", "accelerator", "devices",
         "precision", "device_name", "gpu_memory_peak_mb"}
        (the last two: the GPU's name and its peak allocated memory during the run; None on CPU).
    """
    start = time.perf_counter()
    r = resolve_recipe(recipe)
    options = resolve_trainer(accelerator, devices, precision)
    on_gpu = options["accelerator"] == "gpu"
    out_dir = Path(out_dir)
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    loggers: list = []
    try:
        seed_everything(int(r["seed"]))
        model = create_model(arch, task.num_classes)
        head = classifier_name(model)
        if init_state is not None:
            load_init_state(model, init_state, skip_prefix=head)
        preprocess = Preprocess.for_model(model)
        if r["method"] == "lora":
            model = add_lora(model, r, head)
        batch_size = int(r["batch_size"])
        per_epoch = math.ceil(len(task.y_train) / batch_size)
        total = per_epoch * int(r["epochs"])
        if r["max_steps"]:
            total = min(total, int(r["max_steps"]))
        module = Classifier(model, preprocess, r, total)
        train = _loader(task.x_train, task.y_train, batch_size, derive_seed(r["seed"], "shuffle"))
        val = _loader(task.x_val, task.y_val, max(batch_size, 256), None)

        metadata = {"arch": arch, "node_id": node_id, "task": str(task.name), "method": r["method"]}
        timer = TrainTimer()
        callbacks: list[pl.Callback] = [timer]
        ckpt = None
        if checkpoint_every:
            ckpt = StepCheckpoints(int(checkpoint_every), out_dir / "checkpoints" / node_id, r["method"], metadata)
            callbacks.append(ckpt)
        loggers = build_loggers(logger_cfg, node_id)
        with lightning_info(progress):
            trainer = pl.Trainer(
                **options, max_epochs=int(r["epochs"]),
                max_steps=total, logger=loggers or False, callbacks=callbacks, enable_checkpointing=False,
                enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                check_val_every_n_epoch=None, val_check_interval=total, log_every_n_steps=max(1, min(50, total)),
                deterministic="warn" if on_gpu else True, default_root_dir=str(out_dir))
            if on_gpu:  # after the Trainer, which sets CUBLAS_WORKSPACE_CONFIG before CUDA starts here
                torch.cuda.reset_peak_memory_stats()
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
            if module.val_accuracy is None:  # the end-of-run validation did not fire (e.g. stopped early)
                trainer.validate(module, dataloaders=val, verbose=False)
        device_name = torch.cuda.get_device_name() if on_gpu else None
        memory_mb = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None

        model = module.model.cpu()
        adapter = None
        if r["method"] == "lora" and save_adapter:
            adapter = str(_save_adapter(model, out_dir / "adapters" / node_id))
        state = trainable_state(model.merge_and_unload() if r["method"] == "lora" else model)
        weights = save_weights(out_dir / "models" / f"{node_id}.safetensors", state, metadata)
        return {"val_accuracy": float(module.val_accuracy), "weights": str(weights),
                "sha256": sha256_file(weights), "steps": int(trainer.global_step),
                "seconds": time.perf_counter() - start, "adapter": adapter,
                "train_seconds": timer.seconds, "step_seconds": timer.step_seconds, "final_loss": module.last_loss,
                "num_threads": torch.get_num_threads(),
                "checkpoints": [str(p) for p in ckpt.paths] if ckpt else [], **options,
                "device_name": device_name, "gpu_memory_peak_mb": memory_mb}
    finally:
        _finish_loggers(loggers)
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)
