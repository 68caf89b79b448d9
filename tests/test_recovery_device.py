"""recovery.device: the option's values and errors, and the torch kernels (on CPU always, on CUDA when a GPU is
visible) against the numpy path: equal ranks, l2 within float tolerance."""
import sys

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from recovery.distances import layer_ranks, pairwise_sq_dists
from recovery.kernels import Kernel, resolve_device
from recovery.synthetic import finetune, random_weights, vit_shapes, write_tree
from recovery.weights import analyze_folder
from tests.recovery_inputs import run_cli

HAS_CUDA = torch.cuda.is_available()
TORCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA GPU visible to torch (torch.cuda.is_available() is False); the cuda kernels run "
                         "on a GPU machine: OMP_NUM_THREADS=1 python -m pytest tests/test_recovery_device.py"))]


def _lora_stack(seed: int, n: int = 7, m: int = 96, d: int = 64) -> np.ndarray:
    """A root, LoRA children and grandchildren (merged deltas of rank 2-8), one dense fine-tune, float32."""
    rng = np.random.default_rng(seed)
    w0 = 0.02 * rng.standard_normal((m, d))
    ws = [w0]
    for k in range(n - 2):
        base = ws[rng.integers(len(ws))]
        r = int(rng.integers(2, 9))
        ws.append(base + 1e-2 * rng.standard_normal((m, r)) @ rng.standard_normal((r, d)) / np.sqrt(r * d))
    ws.append(w0 + 1e-3 * rng.standard_normal((m, d)))
    return np.stack(ws).astype(np.float32)


def test_bad_device_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"recovery\.device must be one of \['auto', 'cpu', 'cuda'\], got 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    assert Kernel.for_device("cpu") == Kernel("numpy", "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible: recovery.device=cuda is valid here")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"recovery\.device=cuda, but torch sees no CUDA GPU"):
        resolve_device("cuda")


def test_cli_rejects_a_bad_device_in_one_line(tmp_path):
    folder = tmp_path / "g"
    write_tree(folder, vit_shapes(16, 1), {"r": ["a", "b"]}, ["r"], seed=0)
    res = run_cli(tmp_path, f"input={folder}", "recovery.device=tpu", "recovery.plot=false")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "recovery.device" in ln]
    assert len(lines) == 1 and "['auto', 'cpu', 'cuda']" in lines[0] and "'tpu'" in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_ranks_equal_numpy_ranks(device, seed):
    ws = _lora_stack(seed)
    ref = layer_ranks(ws, "weight", seed=seed)
    got = layer_ranks(ws, "weight", seed=seed, kernel=Kernel("torch", device))
    assert np.array_equal(got.ranks, ref.ranks)
    assert got.groups == ref.groups
    assert got.n_fast == ref.n_fast > 0   # the certified low-rank path ran on the torch side too
    explicit = layer_ranks(ws, 1e-6, seed=seed, kernel=Kernel("torch", device))
    direct = layer_ranks(ws, 1e-6, method="direct")
    assert np.array_equal(explicit.ranks, direct.ranks)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_gram_matches_numpy(device):
    rng = np.random.default_rng(3)
    base = (0.02 * rng.standard_t(5, size=20000)).astype(np.float32)
    x = np.stack([base + s * rng.standard_normal(20000).astype(np.float32) for s in np.geomspace(1e-5, 1e-2, 9)]
                 + [base, base])   # close pairs, far pairs and an exact duplicate
    ref = pairwise_sq_dists(x)
    for kernel in (Kernel("torch", device), Kernel("numpy", "cpu")):
        got = pairwise_sq_dists(x, kernel=kernel)
        off = ~np.eye(len(x), dtype=bool)
        np.testing.assert_allclose(np.sqrt(got[off]), np.sqrt(ref[off]), rtol=1e-6, atol=0)
        assert got[9, 10] == 0.0 and (got[off] > 0).sum() == off.sum() - 2


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_analysis_on_torch_equals_numpy(tmp_path, device, monkeypatch):
    shapes = vit_shapes(32, 2)
    write_tree(tmp_path / "lora", shapes, {"r": ["a", "b"], "a": ["c"]}, ["r"], seed=4, method="lora", ranks=(2, 4),
               scale=1e-2, graph=False)
    opts = {"distance": {"metric": "lora_rank"}, "layers": {"kinds": ["query", "value"]}, "progress": False}
    ref = analyze_folder(tmp_path / "lora", device="cpu", **opts)
    monkeypatch.setattr(Kernel, "for_device", classmethod(lambda cls, dev="auto": cls("torch", device)))
    got = analyze_folder(tmp_path / "lora", device=device, **opts)
    assert got.ids == ref.ids
    assert np.array_equal(got.distance, ref.distance)
    assert ref.distance.max() >= 2   # real LoRA ranks, not all zeros
    np.testing.assert_allclose(got.l2, ref.l2, rtol=1e-6)
    assert got.info["device"].startswith(device)


def test_auto_on_a_machine_without_gpu_driver_never_imports_torch(tmp_path, monkeypatch):
    """recovery.device=auto with no GPU driver files resolves to cpu without importing torch, and a recover run
    (a torch-free stage) imports no torch at all: seconds of a short run."""
    import recovery.kernels as kernels

    monkeypatch.delitem(sys.modules, "torch")   # restored after the test; nothing here imports it again
    monkeypatch.setattr(kernels.os.path, "exists", lambda p: False)
    assert resolve_device("auto") == "cpu"
    assert "torch" not in sys.modules
    monkeypatch.undo()
    if kernels.gpu_driver_present():
        pytest.skip("this machine has a GPU driver: torch decides there")
    folder = tmp_path / "models"
    write_tree(folder, vit_shapes(32, 1), {"r": ["a", "b"]}, ["r"], seed=0, method="full", scale=1e-2, graph=False)
    out = run_cli(tmp_path, f"input={folder}", f"output_dir={tmp_path / 'out'}", "recovery.plot=false",
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported and "torch" not in imported


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_gram_leaves_a_core_to_busy_side_work_and_restores_the_count():
    from threadpoolctl import threadpool_limits

    from recovery.kernels import BlasThreads
    for start in (1, 2):
        with threadpool_limits(start, user_api="blas"):
            blas = BlasThreads()
            assert blas.most == start
            with blas.beside_side_work(True):
                assert _blas_threads() == {max(start - 1, 1)}
            assert _blas_threads() == {start}
            with blas.beside_side_work(False):
                assert _blas_threads() == {start}


def test_analysis_is_the_same_whatever_the_blas_threads(tmp_path):
    from threadpoolctl import threadpool_limits
    write_tree(tmp_path, vit_shapes(32, 2), {"root": ["a", "b"], "a": ["c"]}, ["root"], seed=3, scale=1e-2)
    runs = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            runs.append(analyze_folder(tmp_path, progress=False))
    assert runs[0].ids == runs[1].ids
    np.testing.assert_allclose(runs[0].distance, runs[1].distance, rtol=1e-6)
    np.testing.assert_allclose(runs[0].direction, runs[1].direction, rtol=1e-12)


def test_direction_side_work_runs_under_the_blas_limit_and_repeats_bit_for_bit(tmp_path, monkeypatch):
    """The direction thread's moments call BLAS: they must always run at the limited count (set before the work is
    submitted), or their sums depend on a race and the scores differ in their last digits from run to run."""
    from threadpoolctl import threadpool_limits

    from recovery.accumulate import DirectionStats
    write_tree(tmp_path, vit_shapes(32, 2), {"root": ["a", "b"], "a": ["c"]}, ["root"], seed=4, scale=1e-2)
    seen, update = [], DirectionStats.update

    def spy(self, batch):
        seen.append(_blas_threads())
        return update(self, batch)

    monkeypatch.setattr(DirectionStats, "update", spy)
    with threadpool_limits(2, user_api="blas"):
        runs = [analyze_folder(tmp_path, progress=False) for _ in range(2)]
    assert seen and all(s == {1} for s in seen)
    assert np.array_equal(runs[0].direction_per_layer, runs[1].direction_per_layer)
