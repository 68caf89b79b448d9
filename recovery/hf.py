"""Hugging Face layouts: the hub cache (``models--ORG--NAME/snapshots/REV``) and PEFT LoRA adapter folders.

A cached repo is one model named ``ORG/NAME``, read from the snapshot ``refs/main`` points at (else the only or the
newest snapshot). A PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``) is read as its
base model, named by ``base_model_name_or_path`` and found among the other models, with the LoRA update merged
in: ``W + scaling * B @ A`` (``scaling = lora_alpha / r``, or ``/ sqrt(r)`` with ``use_rslora``), as PEFT's merge
does; ``modules_to_save`` tensors replace the base's. Recovery then sees an ordinary model, a low-rank child of its
base. Adapters whose base is not among the models are left out with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from common.io import read_json
from recovery.checkpoints import (CheckpointError, ModelSource, TensorInfo, model_from_folder, read_safetensors_header,
                                  torch_load)
from recovery.reader import ModelReader

_CACHE = re.compile(r"^models--(?P<name>.+)$")
_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<mod>.+?)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_SAVED = re.compile(r"^(?P<mod>.+)\.modules_to_save(?:\.[^.]+)?\.(?P<param>[^.]+)$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


# ------------------------------------------------------------------------------------------------ hub cache
def cache_repo_id(folder: Path) -> str | None:
    """``ORG/NAME`` for a hub-cache folder ``models--ORG--NAME``, else None."""
    m = _CACHE.match(folder.name)
    return m.group("name").replace("--", "/") if m else None


def cache_snapshot(folder: Path) -> tuple[Path, str | None]:
    """The snapshot folder to read (refs/main, else the only or newest one) and a note when the choice was a guess."""
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        raise CheckpointError(f"{folder}: Hugging Face cache entry without snapshots/ (nothing downloaded); "
                              f"download the model again or remove the entry")
    ref = folder / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text(encoding="utf-8").strip()
        if (snaps / rev).is_dir():
            return snaps / rev, None
    found = sorted((d for d in snaps.iterdir() if d.is_dir()), key=lambda d: (d.stat().st_mtime, d.name))
    if not found:
        raise CheckpointError(f"{snaps}: no snapshot in this Hugging Face cache entry; download the model again")
    note = None
    if len(found) > 1:
        note = (f"{folder}: {len(found)} cached revisions and no refs/main; read the newest, {found[-1].name} "
                f"(delete the others to choose)")
    return found[-1], note


def cache_entry(folder: Path, notes: list[str]) -> "ModelSource | AdapterFolder":
    """The model (or adapter) cached in hub-cache folder `folder`, named ``ORG/NAME``; notes get any guess made."""
    snap, note = cache_snapshot(folder)
    if note:
        notes.append(note)
    m = model_from_folder(snap, cache_repo_id(folder))
    if m is None:
        files = sorted(p.name for p in snap.iterdir())[:8]
        raise CheckpointError(f"{snap}: no weight file in this cached snapshot (it holds {files}); download "
                              f"model.safetensors (or the adapter's adapter_model.safetensors) into the cache")
    return m


# ------------------------------------------------------------------------------------------------ PEFT adapters
@dataclass
class AdapterFolder:
    """A PEFT adapter found in the input, not yet matched to its base model."""
    id: str
    path: Path
    weights: Path
    config: dict


@dataclass
class Patch:
    """How one base tensor changes: a LoRA update (A, B factors) or a full replacement (modules_to_save)."""
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    scaling: float = 1.0
    transpose: bool = False
    full: np.ndarray | None = None

    def apply(self, w: np.ndarray) -> np.ndarray:
        """The patched tensor (same shape and dtype as the base tensor `w`)."""
        if self.full is not None:
            return self.full.reshape(w.shape).astype(w.dtype, copy=False)
        delta = self.b.reshape(self.b.shape[0], -1) @ self.a.reshape(self.a.shape[0], -1)
        if self.transpose:
            delta = delta.T
        return w + (self.scaling * delta).reshape(w.shape).astype(w.dtype, copy=False)


@dataclass
class Adapter:
    """A PEFT LoRA adapter on `base`: per base tensor, (kind, adapter keys, scaling, transpose)."""
    base: ModelSource
    file: Path
    tensors: dict[str, TensorInfo]
    plan: dict[str, tuple] = field(default_factory=dict)

    def load(self) -> dict[str, Patch]:
        """Read the adapter's (small) tensors and return the patch of every base tensor it changes."""
        arrays = _read_all(self.file, self.tensors)
        out = {}
        for target, (kind, keys, scaling, transpose) in self.plan.items():
            if kind == "full":
                out[target] = Patch(full=arrays[keys[0]])
            else:
                out[target] = Patch(a=arrays[keys[0]], b=arrays[keys[1]], scaling=scaling, transpose=transpose)
        return out


def adapter_folder(d: Path, mid: str) -> AdapterFolder | None:
    """The PEFT adapter in folder `d` (id `mid`), or None when `d` holds none."""
    config = d / "adapter_config.json"
    weights = next((d / n for n in ADAPTER_WEIGHTS if (d / n).is_file()), None)
    if weights is None and not config.is_file():
        return None
    if weights is None:
        raise CheckpointError(f"{config}: PEFT adapter config without its weights ({' or '.join(ADAPTER_WEIGHTS)}); "
                              f"copy the adapter's weight file beside it")
    if not config.is_file():
        raise CheckpointError(f"{weights}: PEFT adapter weights without adapter_config.json (it names the base "
                              f"model and the LoRA scaling); copy the config beside it")
    try:
        cfg = read_json(config)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{config}: not a JSON object")
    return AdapterFolder(mid, d, weights, cfg)


def resolve_adapter(a: AdapterFolder, models: Mapping[str, ModelSource]) -> ModelSource:
    """The adapter as a model: its base's tensors with the LoRA update merged in when read.

    Raises:
        CheckpointError: naming the adapter and why it cannot be read (base missing, not LoRA, shapes disagree).
    """
    cfg = a.config
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise CheckpointError(f"{a.path}: PEFT adapter of type {kind}; only LoRA adapters are read")
    if cfg.get("use_dora"):
        raise CheckpointError(f"{a.path}: DoRA adapter (use_dora=true); only plain LoRA adapters are read")
    base = _find_base(a, models)
    tensors = _adapter_header(a.weights)
    plan = _plan(a, tensors, base)
    return ModelSource(a.id, a.path, [a.weights, *base.files], dict(base.tensors), "peft",
                       Adapter(base, a.weights, tensors, plan))


def _find_base(a: AdapterFolder, models: Mapping[str, ModelSource]) -> ModelSource:
    want = str(a.config.get("base_model_name_or_path") or "").strip()
    if not want:
        raise CheckpointError(f"{a.path / 'adapter_config.json'}: names no base model (base_model_name_or_path "
                              f"is empty); set it to the id of the base model among the input models")
    if want in models:
        return models[want]
    p = Path(want).expanduser()
    if p.exists():
        target = p.resolve()
        for m in models.values():
            if target == m.path.resolve() or target in {f.resolve() for f in m.files}:
                return m
    tail = Path(want.rstrip("/")).name
    by_tail = [m for m in models.values() if m.id.split("/")[-1] == tail]
    if len(by_tail) == 1:
        return by_tail[0]
    if by_tail:
        raise CheckpointError(f"{a.path}: PEFT adapter of base model {want!r}, which matches several models "
                              f"({[m.id for m in by_tail]}); set base_model_name_or_path to one of these ids")
    raise CheckpointError(f"{a.path}: PEFT adapter of base model {want!r}, which is not among the input models; "
                          f"add the base model (a model folder or {tail}.safetensors, or its Hugging Face cache "
                          f"entry) to recover this adapter as its LoRA child")


def _adapter_header(path: Path) -> dict[str, TensorInfo]:
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)
    sd = torch_load(path)
    return {k: TensorInfo(path, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in sd.items()}


def _read_all(path: Path, tensors: dict[str, TensorInfo]) -> dict[str, np.ndarray]:
    fmt = "safetensors" if path.suffix == ".safetensors" else "torch"
    with ModelReader(ModelSource(path.stem, path, [path], tensors, fmt)) as r:
        return {k: r.get(k) for k in tensors}


def _base_tensor(name: str, tensors: Mapping[str, TensorInfo]) -> str | None:
    """The base tensor an adapter key refers to (PEFT keys may carry more or fewer module prefixes)."""
    if name in tensors:
        return name
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        shorter = ".".join(parts[i:])
        if shorter in tensors:
            return shorter
    longer = [t for t in tensors if t.endswith("." + name)]
    return longer[0] if len(longer) == 1 else None


def _pattern_value(patterns: Mapping, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name or its dotted suffix."""
    for key, value in (patterns or {}).items():
        try:
            hit = module == key or re.fullmatch(rf"(.*\.)?{key}", module) is not None
        except re.error:
            hit = module == key or module.endswith("." + key)
        if hit:
            return value
    return default


def _plan(a: AdapterFolder, tensors: Mapping[str, TensorInfo], base: ModelSource) -> dict[str, tuple]:
    """Per base tensor: ("lora", (A key, B key), scaling, transpose) or ("full", (key,), 1, False)."""
    cfg = a.config
    factors: dict[str, dict[str, str]] = {}
    plan: dict[str, tuple] = {}
    for key in tensors:
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        m = _LORA.match(name)
        if m:
            factors.setdefault(m.group("mod"), {})[m.group("ab")] = key
            continue
        saved = _SAVED.match(name)
        target = _base_tensor(f"{saved.group('mod')}.{saved.group('param')}" if saved else name, base.tensors)
        if target is None or base.tensors[target].shape != tensors[key].shape:
            raise CheckpointError(f"{a.weights}: tensor {key!r} is neither a LoRA factor (lora_A / lora_B) nor a "
                                  f"saved module of base model {base.id}; this adapter variant is not read")
        plan[target] = ("full", (key,), 1.0, False)
    alpha0 = float(cfg.get("lora_alpha", 8))
    for mod, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{a.weights}: module {mod!r} has lora_{''.join(ab)} but not its partner factor")
        target = _base_tensor(f"{mod}.weight", base.tensors)
        if target is None:
            raise CheckpointError(f"{a.weights}: LoRA module {mod!r} has no weight {mod}.weight in base model "
                                  f"{base.id} ({base.path}); is base_model_name_or_path the right model?")
        sa, sb = tensors[ab["A"]].shape, tensors[ab["B"]].shape
        rank = sa[0]
        fan_io = bool(cfg.get("fan_in_fan_out", False))
        out_in = (sb[0], int(np.prod(sa[1:], dtype=np.int64)))
        shape = base.tensors[target].shape
        fits = (len(sb) >= 2 and sb[1] == rank and len(shape) >= 2
                and ((shape[1], shape[0]) == out_in if fan_io
                     else (shape[0], int(np.prod(shape[1:], dtype=np.int64))) == out_in))
        if not fits:
            raise CheckpointError(f"{a.weights}: LoRA factors of {mod!r} (A {list(sa)}, B {list(sb)}) do not fit "
                                  f"{target} {list(shape)} of base model {base.id}; is it the adapter's base?")
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), mod, alpha0))
        scaling = alpha / np.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        plan[target] = ("lora", (ab["A"], ab["B"]), float(scaling), fan_io)
    if not plan:
        raise CheckpointError(f"{a.weights}: no LoRA factor in this adapter file")
    return plan
