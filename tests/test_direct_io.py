"""O_DIRECT reads of uncached ranges (recovery.direct_io) return exactly the bytes a buffered read returns, at any
offset and length, short at the end of the file; cached or small ranges are left to the buffered read; and a
recovery pass over evicted files gives the same distances with and without them."""
import fcntl
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from recovery import direct_io
from recovery.weights import analyze_folder


@pytest.fixture
def big_file(tmp_path):
    """A 10 MiB + 12345-byte file of random bytes (crosses the 8 MiB request size) and its contents."""
    data = np.random.default_rng(0).integers(0, 256, 10 * 2**20 + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    if not hasattr(os, "posix_fadvise") or not direct_io.direct_capable(fd):
        os.close(fd)
        pytest.skip("no O_DIRECT (or no posix_fadvise) on this file system")
    yield path, fd, data
    os.close(fd)


def test_direct_read_returns_the_files_bytes(big_file):
    path, fd, data = big_file
    m = direct_io.MIN_BYTES
    for offset, length in [(0, m), (4097, 2 * m + 5), (100, 9 * m), (len(data) - m - 3, m + 3)]:
        direct_io.evict(path)
        assert direct_io.cached_share(fd, offset, length) < direct_io.CACHED
        dest = bytearray(length)
        assert direct_io.read_uncached(fd, offset, memoryview(dest)) == length, (offset, length)
        assert bytes(dest) == data[offset:offset + length], (offset, length)
        assert direct_io.cached_share(fd, offset, length) < direct_io.CACHED   # it did not fill the page cache
    direct_io.evict(path)
    dest = bytearray(m + 100)   # past the end of the file: the bytes that are there, and how many
    assert direct_io.read_uncached(fd, len(data) - m, memoryview(dest)) == m
    assert bytes(dest[:m]) == data[-m:]
    assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT   # flags restored: plain reads at odd offsets work
    assert os.pread(fd, 7, 3) == data[3:10]


def test_cached_and_small_ranges_are_left_to_the_buffered_read(big_file):
    path, fd, data = big_file
    os.pread(fd, len(data), 0)   # now cached
    assert direct_io.cached_share(fd, 0, len(data)) == 1.0
    assert direct_io.read_uncached(fd, 0, memoryview(bytearray(2 * direct_io.MIN_BYTES))) is None
    direct_io.evict(path)
    assert direct_io.read_uncached(fd, 0, memoryview(bytearray(direct_io.MIN_BYTES - 1))) is None


def test_recovery_on_evicted_files_is_the_same_with_direct_reads(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = {"blocks.0.mlp.fc1.weight": rng.standard_normal((640, 512), dtype=np.float32),   # 1.25 MiB: direct
            "blocks.0.mlp.fc2.weight": rng.standard_normal((64, 64), dtype=np.float32)}     # small: buffered
    for i in range(4):
        save_file({k: v + np.float32(0.01 * (i + 1)) * rng.standard_normal(v.shape, dtype=np.float32)
                   for k, v in root.items()}, str(tmp_path / f"m{i}.safetensors"))
    files = sorted(tmp_path.glob("*.safetensors"))
    fd = os.open(files[0], os.O_RDONLY)
    capable = direct_io.direct_capable(fd)
    os.close(fd)
    if not capable or not hasattr(os, "posix_fadvise"):
        pytest.skip("no O_DIRECT (or no posix_fadvise) on this file system")
    read, direct_reads = direct_io.read_uncached, []
    monkeypatch.setattr(direct_io, "read_uncached", lambda *a: direct_reads.append(read(*a)) or direct_reads[-1])
    out = {}
    for direct in (True, False):
        for f in files:
            direct_io.evict(f)
        out[direct] = analyze_folder(tmp_path, distance={"metric": "l2"}, progress=False, direct_io=direct)
    assert direct_reads.count(640 * 512 * 4) == 4   # the large tensor of each model, read with O_DIRECT once
    assert out[True].ids == out[False].ids
    assert np.array_equal(out[True].l2, out[False].l2)
    assert np.array_equal(out[True].direction, out[False].direction)
