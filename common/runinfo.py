"""What every run records beside its output: composed config, resolved seed, versions, thread count."""
from __future__ import annotations

import os
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


def numeric_env() -> dict[str, Any]:
    """What decides the float results beyond the versions: CPU model and instruction set, BLAS builds, threads.

    Weights and scores are bit-identical only where all of these match (see README, "Reproducibility"); a
    difference between two machines can be traced here.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu, "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import numpy as np
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError) as exc:  # numpy < 1.26 has no dict mode: say so rather than guess
        out["numpy_blas"] = f"unknown ({type(exc).__name__})"
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        config = torch.__config__.show()
        out["torch_blas"] = next((part.split("=", 1)[1] for part in config.replace(",", " ").split()
                                  if part.startswith("BLAS_INFO=")), "unknown")
        out["torch_mkl"] = next((ln.strip(" -") for ln in config.splitlines() if "Math Kernel Library" in ln), None)
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["torch_threads"] = torch.get_num_threads()
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
              "versions": versions(), "numeric_env": numeric_env(), **(extra or {})}
    return write_json(out_dir / "run.json", record)
