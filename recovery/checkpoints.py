"""Find the models in a folder and read their tensors one at a time.

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

Safetensors files are read with our own small header parser and ``pread``-style reads instead of
``safetensors.safe_open``: ``safe_open`` memory-maps the file, and every page touched stays in the process's
resident set until the file is closed, so keeping n files open for one pass would make peak RSS the size of all
n models. Reading each tensor into a fresh buffer keeps peak memory at n x the largest tensor. The parser checks
the header against the file (a truncated or corrupt file is reported by name); tests check it reads exactly what
``safe_open`` reads.
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import struct
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from common.errors import InputError
from common.io import read_json
from recovery import direct_io

STAGES = ("generalization", "specialization")
DEFAULT_STAGE = "specialization"

# safetensors dtype -> (numpy dtype to read, is floating point)
_DTYPES = {
    "F64": (np.float64, True), "F32": (np.float32, True), "F16": (np.float16, True), "BF16": (np.uint16, True),
    "I64": (np.int64, False), "I32": (np.int32, False), "I16": (np.int16, False), "I8": (np.int8, False),
    "U64": (np.uint64, False), "U32": (np.uint32, False), "U16": (np.uint16, False), "U8": (np.uint8, False),
    "BOOL": (np.bool_, False),
}
_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")
_MAX_HEADER = 100 * 2**20
READ_AHEAD = 2   # tensors whose bytes the prefetching reader asks the kernel for ahead of reading them


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
        if self.dtype in _DTYPES:
            return _DTYPES[self.dtype][1]
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
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name!r} has negative shape "
                                  f"{list(shape)})")
        itemsize = np.dtype(_DTYPES[dtype][0]).itemsize
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
    sd = _torch_load(path)
    return {k: TensorInfo(path, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in sd.items()}


def _torch_load(path: Path) -> dict:
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


class ModelReader:
    """Reads tensors of one model; every file is opened once (use as a context manager).

    With `direct`, large tensors that are not in the page cache are read with O_DIRECT (recovery.direct_io) where
    the file system takes it; one thread at a time may read through a reader.
    """

    def __init__(self, model: ModelSource, direct: bool = False):
        self.model = model
        self.direct = direct
        self._stack = ExitStack()
        self._files: dict[Path, object] = {}
        self._direct: set[Path] = set()   # files read with O_DIRECT where uncached
        self._sd: dict | None = None
        self._base: ModelReader | None = None
        self._patches: dict = {}

    def __enter__(self) -> "ModelReader":
        if self.model.adapter is not None:   # base model's tensors + the adapter's update (recovery.hf)
            try:
                self._base = self._stack.enter_context(ModelReader(self.model.adapter.base))
                self._patches = self.model.adapter.load()
            except BaseException:
                self._stack.close()
                raise
        elif self.model.fmt == "torch":
            self._sd = _torch_load(self.model.files[0])
        else:
            for f in self.model.files:
                try:
                    self._files[f] = self._stack.enter_context(open(f, "rb", buffering=0))
                except OSError as e:
                    raise CheckpointError(f"{f}: cannot open ({e.strerror or e})") from None
                if self.direct and direct_io.direct_capable(self._files[f].fileno()):
                    self._direct.add(f)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._sd = None
        self._base, self._patches = None, {}

    def get(self, name: str, out: np.ndarray | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Tensor `name` as float32 (float64 stays float64), into `out` (flat, right size) when given.

        `rows` = (start, stop) reads only those rows (first axis) of the tensor; from a safetensors file only their
        bytes are read.
        """
        info = self.model.tensors[name]
        if rows is not None:
            return self._get_rows(name, info, rows, out)
        if self._base is not None:
            arr = self._base.get(name, out)
            if name in self._patches:
                arr[...] = self._patches[name].apply(arr)
            return arr
        if self._sd is not None:
            t = self._sd[name].detach()
            arr = (t.double() if t.dtype.is_floating_point and t.element_size() == 8 else t.float()).numpy().reshape(-1)
            if out is None:
                return arr.reshape(info.shape).copy()
            out[...] = arr
            return out.reshape(info.shape)
        return self._read(name, info, info.start, info.numel, out, info.shape)

    def advise(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Ask the kernel to start reading tensor `name` (rows `rows`) into the page cache now (posix_fadvise
        WILLNEED; returns at once), so that a later `get` finds it there. A no-op where the OS has no fadvise and
        for files that are not read by byte range (torch pickles, adapters)."""
        info = self.model.tensors[name]
        f = self._files.get(info.file)
        if f is None or not hasattr(os, "posix_fadvise"):
            return
        offset, length = info.start, info.end - info.start
        if rows is not None:
            per_row = (info.end - info.start) // max(info.shape[0], 1)
            offset, length = info.start + rows[0] * per_row, (rows[1] - rows[0]) * per_row
        if info.file in self._direct and length >= direct_io.MIN_BYTES:
            return   # read with O_DIRECT if uncached: filling the page cache first would only cost CPU
        try:
            os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:   # a hint only: a file system without it reads on demand
            pass

    def _get_rows(self, name: str, info: "TensorInfo", rows: tuple[int, int], out: np.ndarray | None) -> np.ndarray:
        """Rows [start, stop) of tensor `name` (see `get`)."""
        start, stop = rows
        shape = (stop - start,) + tuple(info.shape[1:])
        per_row = int(np.prod(info.shape[1:], dtype=np.int64))
        if self._base is not None or self._sd is not None:
            part = self.get(name)[start:stop].reshape(-1)
            if out is None:
                return part.reshape(shape).copy()
            out[...] = part
            return out.reshape(shape)
        itemsize = np.dtype(_DTYPES[info.dtype][0]).itemsize
        return self._read(name, info, info.start + start * per_row * itemsize, (stop - start) * per_row, out, shape)

    def _read(self, name: str, info: "TensorInfo", offset: int, count: int, out: np.ndarray | None,
              shape: tuple[int, ...]) -> np.ndarray:
        """`count` values of tensor `name` from byte `offset` of its safetensors file, as float32 / float64;
        straight into `out` when the file already stores that type."""
        np_dtype = _DTYPES[info.dtype][0]
        direct = out is not None and out.dtype == np_dtype and out.flags.c_contiguous and info.dtype != "BF16"
        raw = out.reshape(-1) if direct else np.empty(count, dtype=np_dtype)
        f = self._files[info.file]
        dest = memoryview(raw).cast("B")
        got = direct_io.read_uncached(f.fileno(), offset, dest) if info.file in self._direct else None
        if got is None:
            f.seek(offset)
            got = f.readinto(dest)
        if got != count * raw.itemsize:
            raise CheckpointError(f"{info.file}: truncated while reading tensor {name!r} (file changed on disk?)")
        if direct:
            return out.reshape(shape)
        if info.dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        target = np.float64 if info.dtype == "F64" else np.float32
        if out is not None:
            out[...] = raw
            return out.reshape(shape)
        return raw.astype(target, copy=False).reshape(shape)


def open_all(models: list[ModelSource], direct: bool = False) -> tuple[ExitStack, list[ModelReader]]:
    """Open every model once for a pass (`direct`: see ModelReader); close with the returned ExitStack."""
    stack = ExitStack()
    try:
        readers = [stack.enter_context(ModelReader(m, direct)) for m in models]
    except BaseException:
        stack.close()
        raise
    return stack, readers


def iter_stacked(readers: list[ModelReader], names: list[str], rows: Mapping[str, tuple[int, int]] | None = None,
                 prefetch: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array of shape (n_models, *shape)) per tensor; only one stack is alive at a time.

    The stack is float32, or float64 when any model stores the tensor in 64 bits. `rows` maps a tensor name to the
    (start, stop) rows to read of it (its stack then holds only those rows). With `prefetch`, a reader thread
    fills the next stack while the caller works on this one (two reused buffers: peak memory 2 x n x the largest
    tensor, and no fresh pages to fault in per tensor); a yielded stack is valid until the next one is asked for.
    """
    rows = rows or {}
    plan = [(name, *_stack_layout(readers, name, rows.get(name))) for name in names]
    if not prefetch:
        for name, shape, dtype in plan:
            buf = np.empty((len(readers), int(np.prod(shape, dtype=np.int64))), dtype=dtype)
            _fill(readers, name, rows.get(name), buf)
            yield name, buf.reshape((len(readers),) + shape)
            del buf
        return
    yield from _prefetched(readers, plan, rows)


def _stack_layout(readers: list[ModelReader], name: str, part: tuple[int, int] | None
                  ) -> tuple[tuple[int, ...], type]:
    """Shape (without the model axis) and dtype of the stack of tensor `name`."""
    infos = [r.model.tensors[name] for r in readers]
    shape = tuple(infos[0].shape) if part is None else (part[1] - part[0],) + tuple(infos[0].shape[1:])
    return shape, (np.float64 if any(i.wide for i in infos) else np.float32)


def _fill(readers: list[ModelReader], name: str, part: tuple[int, int] | None, buf: np.ndarray) -> None:
    """Read tensor `name` (rows `part`) of every model into the rows of `buf` (n, numel)."""
    for i, r in enumerate(readers):
        r.get(name, out=buf[i], rows=part)


def _prefetched(readers: list[ModelReader], plan: list, rows: Mapping[str, tuple[int, int]]
                ) -> Iterator[tuple[str, np.ndarray]]:
    """`iter_stacked` with a reader thread one tensor ahead, into two reused byte buffers (more buffers did not
    help: 9.0-10.3 s either way reading 40 ViT-B-sized models cold)."""
    n = len(readers)
    size = max((n * int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for _, s, d in plan), default=0)
    free: queue.Queue = queue.Queue()
    for _ in range(2):
        free.put(np.empty(size, dtype=np.uint8))
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    ahead = threading.Semaphore(READ_AHEAD + 1)   # tensors hinted but not yet read

    def hint() -> None:
        """Ask the kernel for each tensor's bytes, READ_AHEAD tensors before the reader gets there: a hint can
        block while the disk's queue is full, so it has its own thread and never holds up the reader."""
        for name, _, _ in plan:
            ahead.acquire()
            if stop.is_set():
                return
            for r in readers:
                r.advise(name, rows.get(name))

    def produce() -> None:
        try:
            for name, shape, dtype in plan:
                raw = free.get()
                if stop.is_set():
                    return
                count = n * int(np.prod(shape, dtype=np.int64))
                buf = raw[:count * np.dtype(dtype).itemsize].view(dtype).reshape(n, -1)
                _fill(readers, name, rows.get(name), buf)
                ahead.release()
                ready.put((name, buf.reshape((n,) + shape), raw))
        except BaseException as e:   # handed to the consumer, which raises it
            ready.put(e)

    hinter = threading.Thread(target=hint, name="mother-readahead", daemon=True)
    worker = threading.Thread(target=produce, name="mother-prefetch", daemon=True)
    hinter.start()
    worker.start()
    try:
        for _ in plan:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            name, stack, raw = item
            yield name, stack
            del stack
            free.put(raw)
    finally:
        stop.set()
        free.put(np.empty(0, dtype=np.uint8))   # wake a producer waiting for a buffer
        ahead.release()                          # and a hinter waiting for the reader
        worker.join()
        hinter.join()
