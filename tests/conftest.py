"""Shared test fixtures: composing the Hydra config without the command line, one torch thread."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # shared cores: BLAS threads thrash
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
os.environ.setdefault("WANDB_MODE", "offline")
_SESSION_TMP = pytest.StashKey[str]()


def pytest_configure(config):
    """Give the session, and every process it starts, its own TMPDIR (removed at the end).

    Libraries leave directories in the temp dir (tensorflow-datasets' DatasetInfo never removes its mkdtemp; wandb's
    media / artifact dirs stay behind in the processes the resume tests kill): ~35 a run. pytest's tmp_path stays
    under the system temp dir. Made here, not at import, so that importing a test helper outside pytest creates
    nothing.
    """
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    config.stash[_SESSION_TMP] = tempfile.mkdtemp(prefix="mother-tests-")
    os.environ["TMPDIR"] = config.stash[_SESSION_TMP]
    tempfile.tempdir = None   # gettempdir() reads TMPDIR again


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's TMPDIR (only this run's library leftovers live there)."""
    shutil.rmtree(session.config.stash.get(_SESSION_TMP, ""), ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _config_schemas():
    """The stage schemas in Hydra's ConfigStore: the yaml files extend them, so every composition needs them (tests
    that compose with Hydra's API directly included)."""
    from common.paths import register_resolvers

    register_resolvers()
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The cores are shared; one torch thread keeps timings sane and results reproducible."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield


def compose(overrides: list[str] | None = None, output_dir: str | os.PathLike | None = None):
    """Compose conf/config.yaml like `python run.py` would, with paths.output_dir resolvable outside Hydra."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from common.paths import register_resolvers

    register_resolvers()
    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"paths.output_dir={output_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture
def cfg_factory(tmp_path):
    """Return a function composing the config with all writable paths under tmp_path."""
    def factory(overrides: list[str] | None = None):
        base = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.graphs_dir={tmp_path / 'graphs'}",
                f"paths.results_dir={tmp_path / 'results'}"]
        return compose(base + list(overrides or []), output_dir=tmp_path / "out")
    return factory


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test, in order: the data drawn can be read back from its axes
    (lines' get_xydata(), collections' get_offsets()) and checked against the results it was drawn from."""
    from matplotlib.figure import Figure

    saved: list = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        if not any(f is self for f in saved):  # once per figure (save_figure writes a PNG and a PDF)
            saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved
