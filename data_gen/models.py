"""Model architectures, input normalisation and weight files.

Weights are plain timm state dicts everywhere (tensor names as timm names them). Models take *normalised float*
images; `preprocess` turns the uint8 batches of `data_gen.tasks` into that (scale to [0, 1], subtract the
architecture's mean, divide by its std, resize when the task's image size differs from the model's), so the
normalisation lives outside the weights and the saved files stay pure timm checkpoints.

Loading a root from its source (built-in, hub, file) is `data_gen.sources`, one layer above this module and
`data_gen.roots`, so imports run one way: models <- finetune <- pretraining <- roots <- sources.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from common.io import atomic_write
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

# Built-in tiny architectures: sized so a fine-tune of a few hundred steps takes seconds on 2 CPU cores.
# "vit_mini_d<W>" is vit_mini at width W (embed_dim; heads, depth and patch unchanged): the scale ladder's rungs.
BUILTIN_ARCHS: dict[str, dict[str, Any]] = {
    "vit_mini": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "resnet_mini": dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16),
}
_VIT_WIDTH = re.compile(r"^vit_mini_d(?P<width>[1-9][0-9]*)$")


def builtin_arch(arch: str) -> tuple[str, dict[str, Any]] | None:
    """(family "vit" | "resnet", constructor kwargs) of a built-in arch name, None for any other name."""
    if arch == "resnet_mini":
        return "resnet", dict(BUILTIN_ARCHS[arch])
    if arch == "vit_mini":
        return "vit", dict(BUILTIN_ARCHS[arch])
    m = _VIT_WIDTH.match(arch)
    if m:
        width = int(m["width"])
        if width % BUILTIN_ARCHS["vit_mini"]["num_heads"]:
            raise ValueError(f"arch {arch!r}: width must be a multiple of {BUILTIN_ARCHS['vit_mini']['num_heads']}")
        return "vit", {**BUILTIN_ARCHS["vit_mini"], "embed_dim": width}
    return None


# Inputs of the built-in archs: 32x32 RGB scaled to [-1, 1] (mean = std = 0.5, as timm's ViTs use).
BUILTIN_INPUT = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def create_model(arch: str, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    """Create an untrained model: a built-in tiny arch ("vit_mini", "vit_mini_d128", "resnet_mini") or any timm name.

    Args:
        arch: architecture name.
        num_classes: size of the classification head.
        **kwargs: passed to the constructor (override the built-in sizes, e.g. depth=2).
    """
    builtin = builtin_arch(arch)
    if builtin is not None and builtin[0] == "vit":
        model = VisionTransformer(num_classes=num_classes, **{**builtin[1], **kwargs})
    elif builtin is not None:
        model = ResNet(block=BasicBlock, num_classes=num_classes, **{**builtin[1], **kwargs})
    else:
        try:
            return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ValueError(f"unknown arch {arch!r}: not built-in ({sorted(BUILTIN_ARCHS)}) "
                                 f"and not a timm model name") from None
            raise
    classifier = "head" if builtin[0] == "vit" else "fc"
    model.pretrained_cfg = {**BUILTIN_INPUT, "architecture": arch, "classifier": classifier, "num_classes": num_classes}
    return model


def input_config(model: torch.nn.Module) -> dict[str, Any]:
    """The model's expected input: {"input_size": (C, H, W), "mean": (...), "std": (...)}."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {"input_size": tuple(cfg.get("input_size", (3, 224, 224))),
            "mean": tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
            "std": tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))}


def classifier_name(model: torch.nn.Module) -> str:
    """Name of the classification head module (timm's `pretrained_cfg["classifier"]`, e.g. "head" or "fc")."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not name:
        for name in ("head", "fc", "classifier"):
            if isinstance(getattr(model, name, None), torch.nn.Module):
                return name
        raise ValueError(f"cannot find the classification head of {type(model).__name__}")
    return name


class Preprocess(torch.nn.Module):
    """uint8 [N, 3, H, W] -> normalised float [N, 3, h, w] for the model (resized when sizes differ)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], size: tuple[int, int]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.size = tuple(size)

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "Preprocess":
        cfg = input_config(model)
        return cls(cfg["mean"], cfg["std"], cfg["input_size"][1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous float32 copy of the model's state dict (what we save)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() if v.is_floating_point()
            else v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def load_init_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, skip_prefix: str) -> None:
    """Load `state` into `model` except the head (`skip_prefix`), requiring every other tensor to match.

    Raises:
        ValueError: a non-head tensor is missing, unexpected, or of the wrong shape (names the tensors).
    """
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(skip_prefix + ".")}
    expected = {k for k in own if not k.startswith(skip_prefix + ".")}
    missing, unexpected = sorted(expected - body.keys()), sorted(body.keys() - expected)
    bad = sorted(k for k in expected & body.keys() if tuple(own[k].shape) != tuple(body[k].shape))
    if missing or unexpected or bad:
        raise ValueError(f"init weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {bad[:5]}")
    model.load_state_dict(body, strict=False)


def save_weights(path: str | Path, state: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Path:
    """Atomically write a safetensors file with `info` (JSON) in its metadata under the key "mother".

    One metadata key only: safetensors writes a metadata map in no fixed order, and the file hash must be stable.
    """
    text = json.dumps(dict(info), sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(dict(state), tmp, metadata={"mother": text}))


def weights_info(path: str | Path) -> dict[str, Any]:
    """The metadata of a weights file: our "mother" JSON record, else the raw string map (may be empty)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["mother"]) if "mother" in meta else dict(meta)
