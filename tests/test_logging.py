"""One logger tree under `mother`: its level reaches every stage's messages."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from recovery.stage import recover
from recovery.synthetic import mlp_shapes, write_tree

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("analysis", "common", "data_gen", "recovery")


# Modules that look up other libraries' loggers to set their level, never to log: file -> the names they use.
FOREIGN_LOGGERS = {"data_gen/finetune.py": {"name"}}   # lightning_info: Lightning's rank-zero info loggers


def test_every_library_logger_is_under_mother():
    """No module logs under its own `__name__` (outside `mother`, whose level would not reach it)."""
    outside = []
    for package in LIBRARY:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for name in re.findall(r"getLogger\(([^)]*)\)", path.read_text()):
                if name.strip() in FOREIGN_LOGGERS.get(rel, ()):
                    continue
                if not re.fullmatch(r"""["']mother(\.[\w.]+)?["']""", name.strip()):
                    outside.append(f"{rel}: getLogger({name})")
    assert not outside, outside


def test_mother_level_silences_recovery_warnings(tmp_path, caplog):
    """A plain MLP makes recovery warn that it falls back to every 2-D weight; `mother` at ERROR silences it."""
    write_tree(tmp_path / "m", mlp_shapes(), {"r": ["a", "b"], "a": ["c"]}, ["r"], graph=False)
    mother = logging.getLogger("mother")
    level = mother.level
    try:
        with caplog.at_level(logging.WARNING):
            recover(tmp_path / "m", quiet=True)
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warned and all(r.name.startswith("mother.") for r in warned), [(r.name, r.message) for r in warned]
        assert any("layers" in r.getMessage() for r in warned)
        caplog.clear()
        mother.setLevel(logging.ERROR)
        with caplog.at_level(logging.WARNING):
            recover(tmp_path / "m", quiet=True)
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    finally:
        mother.setLevel(level)
