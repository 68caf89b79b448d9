"""Which tensors take part: shared names and shapes, no classifier heads, selection by kind or regex.

Kinds (for 2-D ``weight`` matrices unless said otherwise):
  query, key, value   attention projections (timm's fused ``qkv`` / ``in_proj_weight`` is split into its q, k, v
                      row blocks, GPT-2's Conv1D ``attn.c_attn`` into its column blocks; HF
                      ``attention.attention.query``; ``q_proj`` ...)
  attn_out            attention output (timm ``attn.proj``, HF ``attention.output.dense``, ``o_proj``, ``out_proj``,
                      GPT-2 ``attn.c_proj``)
  mlp                 MLP matrices (timm ``mlp.fc1/fc2``, HF ``intermediate.dense`` / ``layer.N.output.dense``, ...)
  dense               attn_out + mlp (the paper's choice for the direction score)
  square_2d, all_2d   every square / every 2-D floating tensor
  conv                every floating ``weight`` with 3 or more dimensions
  all                 every floating tensor (biases, norms and embeddings included)
A ``regex`` further restricts the chosen kinds to tensor names it matches (``re.search``); use ``kinds: [all]``
to select by regex alone.

Fallback (``choose_layers``): the named kinds follow timm / Hugging Face naming. When the preferred kinds match no
tensor of the models at hand (a plain MLP's ``layers.0.weight``, a transformer with its own names), the widest
sensible set is used instead: every 2-D weight (heads excluded), then every weight matrix or kernel (``conv`` too).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from common.errors import ConfigError
from recovery.checkpoints import CheckpointError, ModelSource

KINDS = ("query", "key", "value", "attn_out", "mlp", "dense", "square_2d", "all_2d", "conv", "all")
HEAD_PATTERN = r"(^|\.)(head|heads|fc|classifier|lm_head|logits|score)(\.|$)"
FALLBACK_KINDS: tuple[tuple[str, ...], ...] = (("all_2d",), ("all_2d", "conv"))

_NAMED = {
    "query": re.compile(r"(^|\.)(query|q_proj|q|to_q|wq|q_lin)$"),
    "key": re.compile(r"(^|\.)(key|k_proj|k|to_k|wk|k_lin)$"),
    "value": re.compile(r"(^|\.)(value|v_proj|v|to_v|wv|v_lin)$"),
    "attn_out": re.compile(r"(attention\.output\.dense|(attn|attention|self_attn)\.(proj|out_proj|o_proj|dense|c_proj)"
                           r"|(^|\.)(o_proj|out_proj|to_out\.0|wo|out_lin))$"),
    "mlp": re.compile(r"((^|\.)(mlp|ffn|feed_forward|feedforward)\.[^.]+|intermediate\.dense|(^|\.)layer\.\d+\.output\.dense"
                      r"|(^|\.)(fc1|fc2|lin1|lin2|w1|w2|w3|gate_proj|up_proj|down_proj))$"),
}
_FUSED = re.compile(r"(^|\.)(qkv\.weight|in_proj_weight)$")
_FUSED_COLS = re.compile(r"(^|\.)c_attn\.weight$")   # GPT-2's Conv1D stores (in, out): q, k, v side by side


class NoLayerError(CheckpointError):
    """No tensor matches the chosen kinds / regex in every model."""


@dataclass(frozen=True)
class Layer:
    """One unit of comparison: a tensor, or a row (or column) block of a fused qkv tensor ((start, stop))."""
    name: str
    tensor: str
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None

    def take(self, x):
        """This layer's part of tensor `x` (shape (..., *tensor_shape) with the model axis first when stacked)."""
        if self.rows is not None:
            x = x[..., self.rows[0]:self.rows[1], :]
        return x if self.cols is None else x[..., self.cols[0]:self.cols[1]]


def _module(name: str) -> str | None:
    for suffix in (".weight", "_weight"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_head(name: str, pattern: str = HEAD_PATTERN) -> bool:
    """True for classifier-head tensors (timm ``head``, ResNet ``fc``, HF ``classifier`` ...)."""
    return re.search(pattern, name) is not None


def tensor_kinds(name: str, shape: Sequence[int]) -> set[str]:
    """Kinds the whole tensor belongs to (the q/k/v parts of a fused qkv are added by select_layers)."""
    kinds = {"all"}
    module = _module(name)
    if len(shape) == 2:
        kinds.add("all_2d")
        if shape[0] == shape[1]:
            kinds.add("square_2d")
        if module is not None:
            for kind, rx in _NAMED.items():
                if rx.search(module):
                    kinds.add(kind)
            if kinds & {"attn_out", "mlp"}:
                kinds.add("dense")
    elif len(shape) >= 3 and module is not None:
        kinds.add("conv")
    return kinds


def is_fused_qkv(name: str, shape: Sequence[int]) -> bool:
    """timm ``attn.qkv.weight`` / torch ``in_proj_weight``: a (3d, d) stack of q, k and v rows."""
    return len(shape) == 2 and shape[0] == 3 * shape[1] and _FUSED.search(name) is not None


def is_fused_qkv_cols(name: str, shape: Sequence[int]) -> bool:
    """GPT-2 ``attn.c_attn.weight`` (Hugging Face Conv1D, stored (in, out)): a (d, 3d) stack of q, k and v columns."""
    return len(shape) == 2 and shape[1] == 3 * shape[0] and _FUSED_COLS.search(name) is not None


def split_architectures(models: list[ModelSource]) -> tuple[list[ModelSource], dict[str, str]]:
    """Keep the majority architecture; return (kept, {id: why excluded}).

    A (name, shape) pair held by more than half of the models is "core"; a model holding less than half of the core
    parameters is of another architecture and excluded. Without a clear majority this is an error.
    """
    keys = [{(k, t.shape) for k, t in m.tensors.items() if t.floating} for m in models]
    sizes = {(k, t.shape): t.numel for m in models for k, t in m.tensors.items()}
    counts = Counter(k for ks in keys for k in ks)
    core = {k for k, c in counts.items() if 2 * c > len(models)}
    core_size = sum(sizes[k] for k in core)
    if core_size == 0:
        listing = ", ".join(f"{m.path} ({len(k)} floating-point tensors{_integers(m)})" for m, k in zip(models, keys))
        raise CheckpointError(f"no architecture is shared by a majority of the models, cannot compare them: {listing}")
    kept, excluded = [], {}
    for m, ks in zip(models, keys):
        share = sum(sizes[k] for k in ks & core) / core_size
        if share >= 0.5:
            kept.append(m)
        else:
            excluded[m.id] = (f"{m.path}: different architecture (holds {share:.0%} of the parameters shared by the "
                              f"other models{_first_difference(m, core)})")
    if len(kept) < 2:
        raise CheckpointError("fewer than two models share an architecture: " + "; ".join(excluded.values()))
    return kept, excluded


def _first_difference(model: ModelSource, core: set[tuple[str, tuple[int, ...]]]) -> str:
    """"; e.g. x.weight is [8, 4] here, [16, 4] in the others" for the first core tensor `model` lacks or reshapes."""
    for name, shape in sorted(core, key=lambda k: (-len(k[1]), _natural(k[0]))):   # weight matrices first
        info = model.tensors.get(name)
        if info is None:
            return f"; e.g. it has no {name}"
        if info.shape != shape:
            return f"; e.g. {name} is {list(info.shape)} here, {list(shape)} in the others"
        if not info.floating:
            return f"; e.g. {name} is {info.dtype} here{_integers(model)}"
    return ""


def _integers(model: ModelSource) -> str:
    """", n integer tensors: ..." when `model` holds integer weight matrices (quantized weights; 0-d / 1-d integer
    buffers such as batch norm's num_batches_tracked are not), else ""."""
    n = sum(not t.floating and len(t.shape) >= 2 for t in model.tensors.values())
    return (f", {n} integer tensors: quantized weights are not compared, dequantize them to float first"
            if n else "")


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


MISSING = "not in all models"
SHAPE_DIFFERS = "shape differs across models"


def models_disagree(reason: str) -> bool:
    """Whether a `select_layers` drop reason says the models disagree on the tensor (missing in some, or shaped
    differently), as opposed to a tensor left out by rule (classifier heads, integer or empty tensors)."""
    return reason.startswith((MISSING, SHAPE_DIFFERS))


def select_layers(models: list[ModelSource], kinds: Iterable[str] = ("all_2d",), regex: str | None = None,
                  exclude_heads: bool = True, head_pattern: str = HEAD_PATTERN) -> tuple[list[Layer], dict[str, str]]:
    """Layers selected by kind/regex among tensors whose name and shape agree across `models`.

    Returns (layers in natural name order, {tensor name: why dropped}); tensors merely not of a chosen kind are not
    listed as dropped.
    """
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"unknown layer kind(s) {bad}; choose from {list(KINDS)}")
    rx = re.compile(regex) if regex else None
    wanted = set(kinds)
    if "dense" in wanted:
        wanted |= {"attn_out", "mlp"}
    names = sorted({k for m in models for k in m.tensors}, key=_natural)
    layers, dropped = [], {}
    for name in names:
        infos = [m.tensors.get(name) for m in models]
        present = [i for i in infos if i is not None]
        shape = present[0].shape
        whole = tensor_kinds(name, shape)
        parts = []
        if is_fused_qkv(name, shape):
            d = shape[1]
            parts = [(k, (i * d, (i + 1) * d), None) for i, k in enumerate(("query", "key", "value")) if k in wanted]
        elif is_fused_qkv_cols(name, shape):
            d = shape[0]
            parts = [(k, None, (i * d, (i + 1) * d)) for i, k in enumerate(("query", "key", "value")) if k in wanted]
        chosen = bool(whole & wanted)
        if not (chosen or parts) or (rx is not None and not rx.search(name)):
            continue
        head = exclude_heads and is_head(name, head_pattern)
        if len(present) < len(models):
            missing = [m.id for m, i in zip(models, infos) if i is None]
            dropped[name] = f"{MISSING} (missing in {missing[:5]}{'...' if len(missing) > 5 else ''})"
        elif len({i.shape for i in present}) > 1:
            shapes = Counter(str(list(i.shape)) for i in present)
            dropped[name] = ("classifier head; " if head else "") + f"{SHAPE_DIFFERS} ({dict(shapes)})"
        elif head:
            dropped[name] = "classifier head (re-initialised per task, carries no heritage; layers.exclude_heads)"
        elif not all(i.floating for i in present):
            dropped[name] = "not floating point"
        elif 0 in shape:
            dropped[name] = f"empty (shape {list(shape)})"
        elif chosen:
            layers.append(Layer(name, name))
        else:
            layers.extend(Layer(f"{name}[{k[0]}]", name, rows, cols) for k, rows, cols in parts)
    if not layers:
        raise NoLayerError(f"no layer matches kinds={kinds} regex={regex!r} in all {len(models)} models "
                              f"({len(dropped)} candidates dropped: {dict(list(dropped.items())[:5])})")
    return layers, dropped


def numel(layer: Layer, models: list[ModelSource]) -> int:
    """Number of weights in `layer`."""
    shape = models[0].tensors[layer.tensor].shape
    n = int(np.prod(shape, dtype=np.int64))
    if layer.rows is not None:
        n = n // shape[0] * (layer.rows[1] - layer.rows[0])
    return n if layer.cols is None else n // shape[-1] * (layer.cols[1] - layer.cols[0])


def choose_layers(models: list[ModelSource], kinds: Iterable[str], regex: str | None = None,
                  exclude_heads: bool = True, fallback: bool = True
                  ) -> tuple[list[Layer], dict[str, str], list[str] | None]:
    """select_layers, falling back to FALLBACK_KINDS when the preferred kinds match nothing.

    Returns (layers, dropped, the kinds used when it fell back, else None). A regex that matches nothing, or
    `fallback=False`, keeps the error: the user asked for those tensors by name.
    """
    try:
        layers, dropped = select_layers(models, kinds, regex, exclude_heads)
        return layers, dropped, None
    except NoLayerError as e:
        if not fallback or regex:
            raise NoLayerError(f"{e}; choose other layers (recovery.layers / recovery.direction kinds or regex)"
                               + ("" if regex else " or drop recovery.layers.fallback=false")) from None
    for wider in FALLBACK_KINDS:
        try:
            layers, dropped = select_layers(models, wider, None, exclude_heads)
            return layers, dropped, list(wider)
        except NoLayerError:
            continue
    raise NoLayerError(f"no weight matrix or kernel (kinds {list(FALLBACK_KINDS[-1])}) has the same name and shape "
                       f"in all {len(models)} models ({models[0].path} ...); the models share no comparable layer")
