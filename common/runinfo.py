"""What every run records beside its output: composed config, resolved seed, versions, thread count."""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.io import write_json, write_text

_PACKAGES = ("torch", "timm", "peft", "pytorch-lightning", "numpy", "scipy", "safetensors", "hydra-core")


def versions() -> dict[str, str]:
    """Installed versions of the packages results depend on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def torch_threads() -> int | None:
    """torch's intra-op thread count (None when torch is not imported yet)."""
    if "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()


def save_run_record(cfg: DictConfig, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `config.yaml` (resolved) and `run.json` (seed, versions, threads, extras) into `out_dir`."""
    out_dir = Path(out_dir)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record = {"seed": int(cfg.seed), "num_threads": torch_threads(), "argv": sys.argv,
              "versions": versions(), **(extra or {})}
    return write_json(out_dir / "run.json", record)
