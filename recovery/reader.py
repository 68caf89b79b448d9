"""Read models' tensors: one model's at a time (`ModelReader`) or one tensor of every model at a time (`iter_stacked`).

Safetensors files are read with ``pread``-style reads into our own buffers instead of ``safetensors.safe_open``:
``safe_open`` memory-maps the file, and every page touched stays in the process's resident set until the file is
closed, so keeping n files open for one pass would make peak RSS the size of all n models. Reading each tensor into
a fresh buffer keeps peak memory at n x the largest tensor; tests check it reads exactly what ``safe_open`` reads.
Models are found and their headers parsed by recovery.checkpoints.
"""
from __future__ import annotations

import os
import queue
import threading
from contextlib import ExitStack
from typing import Iterator, Mapping

import numpy as np

from recovery import direct_io
from recovery.checkpoints import DTYPES, CheckpointError, ModelSource, TensorInfo, torch_load

READ_AHEAD = 2   # tensors whose bytes the prefetching reader asks the kernel for ahead of reading them


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
            self._sd = torch_load(self.model.files[0])
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
        itemsize = np.dtype(DTYPES[info.dtype][0]).itemsize
        return self._read(name, info, info.start + start * per_row * itemsize, (stop - start) * per_row, out, shape)

    def _read(self, name: str, info: "TensorInfo", offset: int, count: int, out: np.ndarray | None,
              shape: tuple[int, ...]) -> np.ndarray:
        """`count` values of tensor `name` from byte `offset` of its safetensors file, as float32 / float64;
        straight into `out` when the file already stores that type."""
        np_dtype = DTYPES[info.dtype][0]
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
