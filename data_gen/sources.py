"""Root sources: where a graph's level-0 weights come from.

"builtin:<name>" (the project's own tiny pretrained roots, `data_gen.roots`), "timm:<name>" (timm's pretrained
weights), "hf:<repo id>" (a timm-format or transformers-ViT Hugging Face repo), or a local `.safetensors` file.
Hub roots never wait on an unreachable hub: offline they load from the local hub cache or fail at once with
`RootUnavailableError`. This module sits above `data_gen.models` and `data_gen.roots` (imports run one way).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlparse

import timm
import torch
from safetensors.torch import load_file

from common.errors import ConfigError, InputError
from data_gen import roots
from data_gen.models import trainable_state, weights_info

HUB_PROBE_TIMEOUT_S = 3.0


class RootUnavailableError(RuntimeError):
    """A root cannot be loaded (e.g. a hub root while offline and not cached)."""


def root_arch(source: str, arch: str | None = None) -> str | None:
    """The architecture a root source gives, known without loading it (None: only loading tells, e.g. hf: repos
    and local files without `arch`)."""
    if arch:
        return str(arch)
    if source.startswith("builtin:") and source.removeprefix("builtin:") in roots.ROOTS:
        return roots.spec(source.removeprefix("builtin:")).arch
    if source.startswith("timm:"):
        return source.removeprefix("timm:")
    if source.startswith("random:"):
        return source.removeprefix("random:").rpartition(":")[0] or None
    return None


def check_root_source(source: str) -> None:
    """A ConfigError for a root source that cannot load, found before anything is built: an unknown scheme, an
    unknown built-in root, a missing local file (hub roots are checked when loaded; `random:` is a smoke root)."""
    if source.startswith(("timm:", "hf:", "random:")):
        return
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in roots.ROOTS:
            raise ConfigError(f"root {source!r}: unknown built-in root {name!r}; known: {sorted(roots.ROOTS)}")
    elif source.endswith(".safetensors") or os.path.sep in source:
        if not Path(source).is_file():
            raise ConfigError(f"root {source!r}: root weights file not found")
    else:
        raise ConfigError(f"root {source!r}: expected 'builtin:<name>', 'timm:<name>', 'hf:<repo id>' "
                          f"or a path to a .safetensors file")


def load_root(root: str | Mapping, *, cache_dir: Path | None, data_dir: str | Path | None = None,
              num_threads: int | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Load a root model's weights.

    Args:
        root: "builtin:<name>", "timm:<name>", "hf:<repo id>", a path to a `.safetensors` file, or a mapping
            {"root": <one of those>, "arch": <arch>} (arch is required for a local file that does not record it).
        cache_dir: folder of the built-in roots (`<graphs_dir>/roots`); a built-in root neither cached there nor
            shipped in data_gen/assets/roots/ is built there (None: shipped roots only).
        data_dir: passed to the tasks when a built-in root must be pretrained.
        num_threads: torch threads when a built-in root must be pretrained.

    Returns:
        (arch, state_dict): the timm architecture name and its float32 weights (timm tensor names).

    Raises:
        RootUnavailableError: a hub root while offline and not in the local hub cache.
        FileNotFoundError / ValueError: a bad local file or spec (the message names it).
    """
    arch = None
    if isinstance(root, Mapping):
        if "root" not in root:
            raise ConfigError(f"root mapping {dict(root)} needs a 'root' key (and optionally 'arch')")
        arch, root = root.get("arch"), str(root["root"])
    root = str(root)
    if root.startswith("builtin:"):
        path = roots.ensure_root(root.removeprefix("builtin:"), cache_dir=cache_dir and Path(cache_dir),
                                 data_dir=data_dir, num_threads=num_threads)
        return _load_safetensors(path, arch)
    if root.startswith("timm:"):
        return _load_timm(root.removeprefix("timm:"))
    if root.startswith("hf:"):
        return _load_hf(root.removeprefix("hf:"))
    if root.endswith(".safetensors") or os.path.sep in root:
        return _load_safetensors(Path(root), arch)
    raise ConfigError(f"root {root!r}: expected 'builtin:<name>', 'timm:<name>', 'hf:<repo id>' "
                     f"or a path to a .safetensors file")


def _load_safetensors(path: Path, arch: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    """Load a local weights file; the arch comes from the argument, the file's metadata or a sibling root.json."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: root weights file not found")
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: roots are read from .safetensors files only (never unpickled)")
    try:
        meta = weights_info(path)
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    arch = arch or meta.get("arch")
    sidecar = path.parent / "root.json"
    if arch is None and sidecar.is_file():
        arch = json.loads(sidecar.read_text()).get("arch")
    if arch is None:
        raise InputError(f"{path}: architecture unknown; give the root as {{root: {path}, arch: <timm name>}}")
    return arch, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _hub_unavailable(what: str, why: str) -> RootUnavailableError:
    return RootUnavailableError(
        f"hub root {what!r} cannot be loaded: {why}, and it is not in the local Hugging Face cache "
        f"({_hub_cache_dir()}). Either run once with network access to cache it, or save its weights to a "
        f".safetensors file (timm tensor names) and give the root as {{root: /path/to/file.safetensors, "
        f"arch: <timm arch name>}}, or use a built-in root ('builtin:<name>').")


def _hub_cache_dir() -> str:
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached (None when it can): HF_HUB_OFFLINE set, or a connect probe failing.

    The probe is time-bounded (`HUB_PROBE_TIMEOUT_S`, DNS included) so an offline machine fails fast.
    """
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            result.append(None)
        except OSError as e:
            result.append(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
    if not result:
        return f"{host}:{port} did not answer within {HUB_PROBE_TIMEOUT_S:g} s"
    if result[0] is not None:
        return f"{host}:{port} is unreachable ({result[0]})"
    return None


@contextlib.contextmanager
def _hub_offline_mode() -> Iterator[None]:
    """Make huggingface_hub read only its cache for the duration (no retries against an unreachable hub)."""
    from huggingface_hub import constants
    old_const, old_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _hub_call(what: str, fn):
    """Run `fn()` online when the hub is reachable, else from the cache only, failing fast and clearly."""
    reason = hub_offline_reason()
    if reason is None:
        return fn()
    with _hub_offline_mode():
        try:
            return fn()
        except Exception as e:  # the hub client raises several types for "not cached"
            raise _hub_unavailable(what, reason) from e


def _load_timm(name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """timm's pretrained weights for `name` (e.g. "vit_base_patch16_224.augreg2_in21k_ft_in1k")."""
    model = _hub_call(f"timm:{name}", lambda: timm.create_model(name, pretrained=True))
    arch = name if "." in name else f"{name}.{model.pretrained_cfg.get('tag', '')}".rstrip(".")
    return arch, trainable_state(model)


def _load_hf(repo: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A Hugging Face repo: timm format (config.json "architecture"), or a transformers ViT (converted)."""
    from huggingface_hub import hf_hub_download

    def fetch() -> tuple[str, str]:
        config = hf_hub_download(repo, "config.json")
        try:
            return config, hf_hub_download(repo, "model.safetensors")
        except Exception:  # older repos ship only a pickled checkpoint
            return config, hf_hub_download(repo, "pytorch_model.bin")

    config_path, weights_path = _hub_call(f"hf:{repo}", fetch)
    config = json.loads(Path(config_path).read_text())
    if weights_path.endswith(".safetensors"):
        state = load_file(weights_path)
    else:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if "architecture" in config:
        return config["architecture"], {k: v.float() for k, v in state.items()}
    if config.get("model_type") in ("vit", "vit_msn", "vit_mae"):
        return vit_arch_from_hf(config), hf_vit_to_timm(state, int(config["num_hidden_layers"]))
    raise ValueError(f"hf:{repo}: neither a timm repo (config.json 'architecture') nor a transformers ViT "
                     f"(model_type {config.get('model_type')!r}); convert it to timm names and give a local "
                     f".safetensors path")


def vit_arch_from_hf(config: Mapping) -> str:
    """The timm arch of a transformers ViT config (base/large/huge, patch size, image size)."""
    sizes = {768: "base", 1024: "large", 1280: "huge", 384: "small", 192: "tiny"}
    width = sizes.get(int(config["hidden_size"]))
    if width is None:
        raise ValueError(f"transformers ViT with hidden_size {config['hidden_size']}: no timm arch")
    return f"vit_{width}_patch{config['patch_size']}_{config['image_size']}"


def hf_vit_to_timm(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Rename a transformers ViTModel state dict to timm VisionTransformer names (q, k, v fused into qkv).

    The transformers pooler and any classifier are dropped (a fine-tune replaces the head anyway).
    """
    body = {}
    for k, v in state.items():  # strip "vit." / "model." prefixes
        for anchor in ("embeddings.", "encoder.", "layernorm."):
            if anchor in k and k.split(anchor)[0] in ("", "vit.", "model.", "vit_msn.", "vit_mae."):
                body[k[len(k.split(anchor)[0]):]] = v.float()
    out = {"cls_token": body["embeddings.cls_token"], "pos_embed": body["embeddings.position_embeddings"],
           "patch_embed.proj.weight": body["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": body["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": body["layernorm.weight"], "norm.bias": body["layernorm.bias"]}
    pairs = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for t, h in pairs.items():
            for p in ("weight", "bias"):
                out[f"{dst}{t}.{p}"] = body[f"{src}{h}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}attn.qkv.{p}"] = torch.cat([body[f"{src}attention.attention.{n}.{p}"]
                                                   for n in ("query", "key", "value")])
    return out
