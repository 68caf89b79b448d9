"""Models named by Hugging Face repo ids in a text file (``input=ids.txt``), fetched with huggingface_hub.

The file holds one repo id a line (``ORG/NAME``, optionally ``ORG/NAME@REVISION``); blank lines and ``#`` comments
are skipped. Only the weight files are downloaded (``model.safetensors``, or the shard index and its shards, or
``adapter_model.safetensors`` + ``adapter_config.json``, or ``pytorch_model.bin``), one model at a time, into the
Hugging Face cache; recovery then streams them tensor by tensor like any local file. When the hub cannot be
reached, models already in the local cache are used and any other id fails at once with a message saying how to
point recovery at a local cache instead.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from common.errors import InputError
from recovery.checkpoints import CheckpointError, model_from_folder

PROBE_TIMEOUT_S = 3.0
_REPO = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def read_ids(path: Path) -> list[tuple[str, str | None]]:
    """(repo id, revision or None) per line of `path`; a malformed line is an error naming the line."""
    out: list[tuple[str, str | None]] = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        repo, _, rev = line.partition("@")
        if not _REPO.match(repo) or "--" in repo:
            raise InputError(f"{path}:{k}: {line!r} is not a Hugging Face repo id (expected ORG/NAME or "
                             f"ORG/NAME@REVISION, one a line)")
        out.append((repo, rev or None))
    if not out:
        raise InputError(f"{path}: no repo ids (expected one Hugging Face repo id a line, e.g. google/vit-base-patch16-224)")
    return out


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache in use (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def offline_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (None when it answers): HF_HUB_OFFLINE set, or a bounded connect probe failing."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    answer: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as e:
            answer.append(e)

    worker = threading.Thread(target=probe, daemon=True)   # DNS can hang past the socket timeout
    worker.start()
    worker.join(timeout + 0.5)
    if not answer:
        return f"{host}:{port} did not answer within {timeout:g} s"
    return None if answer[0] is None else f"{host}:{port} is unreachable ({answer[0]})"


def cached_folder(repo: str, revision: str | None, cache: Path) -> Path | None:
    """The cached snapshot of `repo` at `revision` (default: refs/main, else the newest) holding weights, or None."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    if not (entry / "snapshots").is_dir():
        return None
    rev = revision or "main"
    ref = entry / "refs" / rev
    name = ref.read_text(encoding="utf-8").strip() if ref.is_file() else rev
    snap = entry / "snapshots" / name
    if not snap.is_dir() and revision is None:
        found = sorted((d for d in (entry / "snapshots").iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        snap = found[-1] if found else snap
    return snap if snap.is_dir() else None


def pick_weight_files(files: list[str]) -> list[str]:
    """The files of a repo that hold one model's weights (top level only), in the order to download them."""
    top = set(f for f in files if "/" not in f)
    if "model.safetensors" in top:
        return ["model.safetensors"]
    if "model.safetensors.index.json" in top:
        return ["model.safetensors.index.json"]   # its shards are read from the index once it is downloaded
    if {"adapter_model.safetensors", "adapter_config.json"} <= top:
        return ["adapter_config.json", "adapter_model.safetensors"]
    if "pytorch_model.bin" in top:
        return ["pytorch_model.bin"]
    return []


def _list_files(repo: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi
    return HfApi().list_repo_files(repo, revision=revision)


def _download(repo: str, filename: str, revision: str | None, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache))


def download_weights(repo: str, revision: str | None, cache: Path, source: Path) -> Path:
    """Download only the weight files of `repo` into the cache; return the snapshot folder holding them."""
    try:
        files = _list_files(repo, revision)
        chosen = pick_weight_files(files)
        if not chosen:
            raise CheckpointError(f"{source}: {repo} has no weight file recovery reads (model.safetensors, sharded "
                                  f"safetensors, adapter_model.safetensors or pytorch_model.bin) among {sorted(files)[:8]}")
        paths = [_download(repo, f, revision, cache) for f in chosen]
        if chosen == ["model.safetensors.index.json"]:
            from common.io import read_json
            shards = sorted(set((read_json(paths[0]).get("weight_map") or {}).values()))
            paths += [_download(repo, f, revision, cache) for f in shards]
    except CheckpointError:
        raise
    except Exception as e:  # the hub client raises many types (not found, gated, network): all mean "cannot fetch"
        raise CheckpointError(f"{source}: cannot download {repo}"
                              f"{'@' + revision if revision else ''} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return paths[0].parent


def hub_entries(path: Path, notes: list[str]) -> list[tuple[str, Path, Callable[[], object]]]:
    """One candidate per repo id in `path`: (id, where, loader). Offline, every id must already be cached.

    Raises:
        InputError: the hub is unreachable and some ids are not in the local cache (fails before any download).
    """
    ids = read_ids(path)
    cache = hub_cache_dir()
    reason = offline_reason()
    if reason is not None:
        cached = {repo: cached_folder(repo, rev, cache) for repo, rev in ids}
        missing = [repo for repo, folder in cached.items() if folder is None]
        if missing:
            raise InputError(
                f"{path}: cannot download {missing[:5]}{' ...' if len(missing) > 5 else ''} from the Hugging Face "
                f"Hub ({reason}) and they are not in the local cache {cache}. Download them where the hub is "
                f"reachable (huggingface-cli download ORG/NAME), then point recovery at the local copy: "
                f"input=PATH_TO/huggingface/hub (a folder of models--ORG--NAME), or set HF_HUB_CACHE to it")
        notes.append(f"{path}: the Hugging Face Hub is unreachable ({reason}); read all {len(ids)} models from the "
                     f"local cache {cache}")
        return [(repo, cached[repo], lambda repo=repo: _from_folder(cached[repo], repo)) for repo, _ in ids]
    return [(repo, path, lambda repo=repo, rev=rev: _from_folder(download_weights(repo, rev, cache, path), repo))
            for repo, rev in ids]


def _from_folder(folder: Path, repo: str) -> object:
    m = model_from_folder(folder, repo)
    if m is None:
        raise CheckpointError(f"{folder}: no weight file for {repo} in this snapshot (expected model.safetensors, "
                              f"sharded safetensors, adapter_model.safetensors or pytorch_model.bin)")
    return m
