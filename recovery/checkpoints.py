"""Find the models in a folder and parse their headers (recovery.reader reads their tensors).

Layouts understood (the model id is in brackets):
  * ``<dir>/<id>.safetensors``                                   [file stem]
  * ``<dir>/<id>/model.safetensors``                             [folder name] (Hugging Face)
  * ``<dir>/<id>/model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``  [folder name]
  * ``<dir>/<id>/pytorch_model.bin`` (read with ``torch.load(weights_only=True)``)       [folder name]
  * a data_gen graph folder: ``<dir>/graph.json`` + ``<dir>/models/<id>.safetensors``, stages from graph.json
  * a Hugging Face cache: ``<dir>/models--ORG--NAME/snapshots/REV/...``            [ORG/NAME] (recovery.hf)
  * a PEFT adapter folder ``<dir>/<id>/adapter_model.safetensors`` + ``adapter_config.json``: read as its base
    model (named in the config, found among the other models) with the LoRA update merged in    [folder name]
  * a text file of Hugging Face repo ids, one a line (``ids.txt``): the weight files are downloaded (recovery.hub)

A model that cannot be used (unreadable or truncated file, adapter without its base) is left out and listed in
``Catalog.excluded`` with the reason; with ``strict=True`` it is an error instead.

Safetensors headers are read with our own small parser (recovery.reader explains why not ``safe_open``); it
checks the header against the file, so a truncated or corrupt file is reported by name.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import InputError
from common.io import read_json

STAGES = ("generalization", "specialization")
DEFAULT_STAGE = "specialization"

# safetensors dtype -> (numpy dtype to read, is floating point)
DTYPES = {
    "F64": (np.float64, True), "F32": (np.float32, True), "F16": (np.float16, True), "BF16": (np.uint16, True),
    "I64": (np.int64, False), "I32": (np.int32, False), "I16": (np.int16, False), "I8": (np.int8, False),
    "U64": (np.uint64, False), "U32": (np.uint32, False), "U16": (np.uint16, False), "U8": (np.uint8, False),
    "BOOL": (np.bool_, False),
}
_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")
_MAX_HEADER = 100 * 2**20


class CheckpointError(InputError):
    """A model file or folder that cannot be used; the message names the file and the problem."""


STRICT_HINT = ("recovery.strict=true makes this fatal: fix or remove the file, or run without recovery.strict=true "
               "to leave the model out and recover the others")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype name, shape and byte range (safetensors) or None (torch .bin)."""
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int = 0
    end: int = 0

    @property
    def floating(self) -> bool:
        if self.dtype in DTYPES:
            return DTYPES[self.dtype][1]
        return self.dtype.startswith(("float", "bfloat"))

    @property
    def wide(self) -> bool:
        """True for 64-bit floats (kept in float64 when read)."""
        return self.dtype in ("F64", "float64")

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ModelSource:
    """One model: its id, its files and the tensors they hold."""
    id: str
    path: Path                      # the file or folder the model came from (used in messages)
    files: list[Path]
    tensors: dict[str, TensorInfo]
    fmt: str                        # "safetensors" | "torch" | "peft" (base model + merged LoRA, recovery.hf)
    adapter: object | None = None   # recovery.hf.Adapter for fmt "peft"

    @classmethod
    def from_safetensors(cls, path: str | Path, model_id: str | None = None) -> "ModelSource":
        """The model in one safetensors file (id: the file stem unless given), its header read and validated."""
        path = Path(path)
        return cls(model_id or path.stem, path, [path], read_safetensors_header(path), "safetensors")


@dataclass
class Catalog:
    """The models found in a folder, their stages and what was said on the way."""
    root: Path
    models: list[ModelSource]
    stages: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    layout: str = "files"           # "files" | "graph" | "hub ids"
    excluded: dict[str, str] = field(default_factory=dict)   # id -> why it cannot be used (names the file)


def _header_int(v) -> int:
    """An integer of a safetensors header (a float or string there is corruption, not a value to round)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; raise CheckpointError naming `path` on any inconsistency."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path}: corrupt or not a safetensors file (header length {n} > file size {size})")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    base, data = 8 + n, size - 8 - n
    out, covered = {}, 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = meta["dtype"], tuple(_header_int(s) for s in meta["shape"]), meta["data_offsets"]
            a, b = _header_int(a), _header_int(b)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header (bad entry for tensor {name!r})") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name!r} has negative shape "
                                  f"{list(shape)})")
        itemsize = np.dtype(DTYPES[dtype][0]).itemsize
        if b - a != itemsize * math.prod(shape) or a < 0:   # Python ints: a forged shape cannot overflow
            raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name!r}: byte range {a}..{b} "
                                  f"does not match shape {list(shape)} {dtype})")
        if b > data:
            raise CheckpointError(f"{path}: truncated file (tensor {name!r} needs bytes up to {b}, "
                                  f"the file holds {data} data bytes)")
        covered = max(covered, b)
        out[name] = TensorInfo(path, dtype, shape, base + a, base + b)
    end = 0
    for name, info in sorted(out.items(), key=lambda kv: (kv[1].start, kv[1].end)):   # back to back, as the format says
        if info.start - base != end:
            raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name!r} starts at data byte "
                                  f"{info.start - base}, the tensor before it ends at {end}: overlap or gap)")
        end = info.end - base
    if covered < data:
        raise CheckpointError(f"{path}: corrupt safetensors file ({data - covered} trailing bytes not covered by the header)")
    return out


def _torch_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, shapes and dtypes of a pytorch_model.bin (loaded with weights_only=True, memory-mapped)."""
    sd = torch_load(path)
    return {k: TensorInfo(path, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in sd.items()}


def torch_load(path: Path) -> dict:
    import torch  # lazy: only .bin checkpoints need torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for bad files; all mean "cannot use this file"
        raise CheckpointError(f"{path}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return sd


def model_from_folder(d: Path, mid: str | None = None) -> "ModelSource | object | None":
    """A Hugging Face-style model folder (id `mid`, default the folder name), a PEFT adapter folder (returned as a
    recovery.hf.AdapterFolder, resolved against its base later), or None when `d` holds no known weight file."""
    mid = mid or d.name
    index = d / "model.safetensors.index.json"
    if (d / "model.safetensors").is_file():
        files = [d / "model.safetensors"]
    elif index.is_file():
        try:
            wm = read_json(index)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from None
        wm = wm.get("weight_map") if isinstance(wm, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index}: no 'weight_map' in the shard index")
        files = sorted({d / f for f in wm.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files listed in the index are missing: {missing}")
    elif (d / "pytorch_model.bin").is_file():
        f = d / "pytorch_model.bin"
        return ModelSource(mid, d, [f], _torch_header(f), "torch")
    else:
        from recovery.hf import adapter_folder  # PEFT adapters: resolved once every base model is known
        return adapter_folder(d, mid)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for k, v in read_safetensors_header(f).items():
            if k in tensors:
                raise CheckpointError(f"{d}: tensor {k!r} appears in both {tensors[k].file.name} and {f.name}")
            tensors[k] = v
    return ModelSource(mid, d, files, tensors, "safetensors")


def _check_stage(value, source: str, mid: str) -> str:
    s = str(value).strip().lower()
    if s not in STAGES:
        raise CheckpointError(f"{source}: unknown stage {value!r} for model {mid!r} (expected one of {list(STAGES)})")
    return s


# Flat-folder files that are pickles (never unpickled there; skipped with a note).
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# One candidate model: (id, where it is, a loader returning the model, an adapter folder, or None for "not a model")
Entry = tuple[str, Path, Callable[[], object]]


def _graph_stages(path: Path) -> dict:
    """The `stage` map of a graph folder's graph.json (DESIGN.md); a CheckpointError names the file if it is broken."""
    try:
        graph = read_json(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: cannot read ({e})") from None
    if not isinstance(graph, dict):
        raise CheckpointError(f"{path}: not a graph.json (expected a JSON object with nodes / edges / stage, "
                              f"found a {type(graph).__name__})")
    stages = graph.get("stage") or {}
    if not isinstance(stages, dict):
        raise CheckpointError(f"{path}: 'stage' must map model ids to generalization | specialization, "
                              f"found a {type(stages).__name__}")
    return stages


def _folder_entries(search: Path, notes: list[str]) -> list[Entry]:
    """The candidate models in a folder: flat safetensors files, model folders, adapter folders, HF cache repos."""
    from recovery.hf import cache_entry, cache_repo_id

    entries: list[Entry] = []
    pickles = []
    for p in sorted(search.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            notes.append(f"{p}: skipped, a broken link")
        elif p.is_file() and p.suffix.lower() == ".safetensors" and not _SHARD.match(p.name):
            entries.append((p.stem, p, lambda p=p: ModelSource.from_safetensors(p)))
        elif p.is_file() and p.suffix.lower() in _PICKLES:
            pickles.append(p.name)
        elif p.is_dir() and cache_repo_id(p) is not None:
            entries.append((cache_repo_id(p), p, lambda p=p: cache_entry(p, notes)))
        elif p.is_dir():
            entries.append((p.name, p, lambda p=p: _folder_model(p, notes)))
    if pickles:
        notes.append(f"{search}: skipped {pickles[:5]}{' ...' if len(pickles) > 5 else ''}: pickle checkpoints are "
                     f"read only as pytorch_model.bin in a model folder (torch.load with weights_only=True); "
                     f"convert them to safetensors")
    return entries


def _folder_model(d: Path, notes: list[str]) -> "ModelSource | object | None":
    """model_from_folder, with a note when a folder holds no model (it is skipped)."""
    m = model_from_folder(d)
    if m is None:
        notes.append(f"{d}: skipped, no model weights there (model.safetensors, sharded safetensors, "
                     f"pytorch_model.bin or a PEFT adapter)")
    return m


def _is_single_model(root: Path) -> bool:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_config.json")
    return any((root / n).is_file() for n in names)


def discover(path: str | os.PathLike, stages_file: str | os.PathLike | None = None, strict: bool = False) -> Catalog:
    """Find every model in `path` (see module doc), validate each file's header and resolve each model's stage.

    A model that cannot be used is listed in `Catalog.excluded` (or, with `strict`, raises CheckpointError).
    Fewer than two usable models is an error.
    """
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: folder not found (input= must be a folder of models or a file of "
                              f"Hugging Face repo ids)")
    notes: list[str] = []
    graph_stages: dict[str, str] = {}
    layout = "files"
    if root.is_file():
        if root.suffix.lower() not in (".txt", ".list", ".ids"):
            raise CheckpointError(f"{root}: not a folder (point recovery at a folder holding two or more models, "
                                  f"or at a .txt file of Hugging Face repo ids, one a line)")
        from recovery.hub import hub_entries
        layout, search, entries = "hub ids", root, hub_entries(root, notes)
    elif (root / "graph.json").is_file() and (root / "models").is_dir():
        layout, search = "graph", root / "models"
        for mid, st in _graph_stages(root / "graph.json").items():
            graph_stages[mid] = _check_stage(st, str(root / "graph.json"), mid)
        entries = _folder_entries(search, notes)
    else:
        search = root
        if _is_single_model(root):
            raise CheckpointError(f"{root}: this folder is a single model; recovery needs a folder of two or more "
                                  f"models (point input= at the folder that holds it and its relatives)")
        entries = _folder_entries(search, notes)
    models, excluded, adapters = _load_entries(entries, root, strict)
    if adapters:
        from recovery.hf import resolve_adapter
        for a in adapters:
            try:
                models[a.id] = resolve_adapter(a, {k: m for k, m in models.items() if m.adapter is None})
            except CheckpointError as e:
                _exclude(excluded, a.id, str(e), strict)
    if not models and not excluded:
        raise CheckpointError(f"{search}: no models found (expected *.safetensors files, model folders with "
                              f"model.safetensors / sharded safetensors / pytorch_model.bin, PEFT adapter folders, "
                              f"or a Hugging Face cache folder holding models--ORG--NAME)")
    if len(models) < 2:
        if not excluded:
            only = next(iter(models.values()))
            raise CheckpointError(f"{search}: only one model found ({only.path}); recovery needs two or more")
        raise CheckpointError(f"{search}: fewer than two usable models ({len(models)} usable: {sorted(models)}); "
                              f"left out: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    stages = {mid: graph_stages.get(mid, DEFAULT_STAGE) for mid in models}
    if stages_file is not None:
        sf = Path(stages_file)
        try:
            given = read_json(sf)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"stages_file={sf}: {e}") from None
        if not isinstance(given, dict):
            raise CheckpointError(f"{sf}: a stages file must be a JSON object {{model id: stage}}")
        unknown = sorted(set(given) - set(models))
        if unknown:
            notes.append(f"{sf}: ids not among the models in {search} were ignored: {unknown[:10]}"
                         + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""))
        for mid, st in given.items():
            if mid in models:
                stages[mid] = _check_stage(st, str(sf), mid)
    ordered = [models[k] for k in sorted(models)]
    return Catalog(root, ordered, stages, notes, layout, excluded)


def _exclude(excluded: dict[str, str], mid: str, reason: str, strict: bool) -> None:
    """Record why model `mid` is left out, or raise with `strict`."""
    if strict:
        raise CheckpointError(f"{reason}; {STRICT_HINT}")
    excluded[mid] = reason


def _load_entries(entries: list[Entry], root: Path, strict: bool
                  ) -> tuple[dict[str, ModelSource], dict[str, str], list]:
    """Load each candidate; unusable ones go to `excluded` (id -> reason), adapter folders are returned apart."""
    models: dict[str, ModelSource] = {}
    excluded: dict[str, str] = {}
    adapters: list = []
    seen: dict[str, Path] = {}
    for mid, where, load in entries:
        if mid in seen:
            raise CheckpointError(f"{root}: two models share the id {mid!r} ({seen[mid].name} and {where.name}); "
                                  f"rename one of them")
        try:
            m = load()
        except CheckpointError as e:
            seen[mid] = where
            _exclude(excluded, mid, str(e), strict)
            continue
        if m is None:
            continue
        seen[mid] = where
        if isinstance(m, ModelSource):
            models[mid] = m
        else:
            adapters.append(m)
    return models, excluded, adapters
