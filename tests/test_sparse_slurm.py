"""The sparse recovery's neighbour search as a submitit job array of 4 row blocks over a model folder, merged:
equal to one process. On the one-node SLURM cluster (`bash ../shared/slurm/slurm_up.sh`; skipped with the reason
where none answers, like tests/test_slurm.py) and through the local launcher (no cluster)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from recovery import sparse
from recovery.sparse_run import load_blocks, neighbours_on_launcher, read_folder
from recovery.synthetic_large import large_forest, write_folder
from tests.conftest import ROOT
from tests.test_slurm import _launcher, job_names, needs_slurm  # noqa: F401 (job_names: fixture)

N = 1024
OPTS = {"knn": 16, "pool": 8, "project_dim": 32, "strip": 256}    # 4 strips: one per block


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(large_forest(N, tree_sizes=(20, 200), shape=(16, 16), seed=5),
                        tmp_path_factory.mktemp("sparse_slurm") / "forest")


def _check_equal_to_one_process(folder: Path, files: list[str]) -> None:
    assert len(files) == 4
    blocks = load_blocks(files)
    assert [b[0] for b in sorted(blocks, key=lambda b: b[0])] == [0, 256, 512, 768]
    fm = read_folder(folder)
    ids, d2 = sparse.merge_blocks(blocks, N)
    one_ids, one_d2 = sparse.neighbours(fm.x, sparse.sparse_options(OPTS))
    assert np.array_equal(ids, one_ids) and np.array_equal(d2, one_d2)
    merged = sparse.recover_matrix(fm.x, fm.direction, splits=fm.splits, sparse=OPTS, blocks=blocks)
    single = sparse.recover_matrix(fm.x, fm.direction, splits=fm.splits, sparse=OPTS)
    assert merged.parent.tolist() == single.parent.tolist()
    assert merged.clustering.labels.tolist() == single.clustering.labels.tolist()


def _local_launcher() -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from data_gen.slurm import launcher_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return launcher_config(hydra_compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True))


@pytest.mark.slow
def test_recover_folder_with_blocks_on_local_launcher_equals_one_process(folder, tmp_path):
    """recovery.sparse.blocks=4 through the local launcher (no cluster): same trees as one process."""
    from recovery.sparse_run import recover_folder

    _, cl, parent, _, _ = recover_folder(folder, sparse_opts={**OPTS, "blocks": 4}, launcher=_local_launcher(),
                                         blocks_dir=tmp_path / "blocks")
    _, cl1, parent1, _, _ = recover_folder(folder, sparse_opts=OPTS)
    assert parent.tolist() == parent1.tolist() and cl.labels.tolist() == cl1.labels.tolist()
    _check_equal_to_one_process(folder, sorted(str(p) for p in (tmp_path / "blocks").glob("block_*.npz")))


@needs_slurm
def test_neighbour_blocks_as_slurm_array_equal_one_process(folder, tmp_path, job_names):
    name = f"mother_knn_{os.getpid()}_{int(time.time())}"
    job_names.append(name)
    files = neighbours_on_launcher(folder, N, OPTS, 4, tmp_path / "blocks", _launcher(), name=name)
    logs = sorted((tmp_path / "blocks" / "submitit").glob("*_log.out"))
    arrays = {p.name.split("_")[0] for p in logs}
    assert len(logs) == 4 and len(arrays) == 1, [p.name for p in logs]   # one array of 4 tasks
    _check_equal_to_one_process(folder, files)
