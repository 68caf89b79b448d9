"""Locate the project root and register the `mother_root` OmegaConf resolver."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

MARKER = ".project-root"


def project_root(start: Path | None = None) -> Path:
    """Return the nearest folder at or above `start` (default: cwd, then this file) holding `.project-root`.

    Raises:
        FileNotFoundError: no marker found; set MOTHER_ROOT or paths.root_dir instead.
    """
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for base in candidates:
        for folder in (base, *base.parents):
            if (folder / MARKER).is_file():
                return folder
    raise FileNotFoundError(
        f"no {MARKER} marker above {candidates[0]}; set MOTHER_ROOT or override paths.root_dir=...")


def register_resolvers() -> None:
    """Register `${mother_root:}` (idempotent)."""
    if not OmegaConf.has_resolver("mother_root"):
        OmegaConf.register_new_resolver("mother_root", lambda: str(project_root()))
