"""The data_gen options (the `data_gen` config group, conf/data_gen/*.yaml) and the fine-tune recipe, typed.

`DataGenConfig` is Hydra's `data_gen/schema` (common.schema.register_schemas), which conf/data_gen/base.yaml
extends: a misspelled key of a graph config, of a method block or of `smoke` fails when the config is composed.
`Recipe` is one fine-tune's training recipe with its defaults (data_gen.finetune.resolve_recipe). A method block
(`FullMethod`, `LoraMethod`) holds, per recipe key, the value of every fine-tune or how to draw it (a scalar or a
list; `{choices: [...]}`; `{range: [lo, hi]}`, data_gen.spec.sample), so those fields are untyped; null: not set
(the recipe's default applies).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING

from common.schema import choices, number


@dataclass
class Recipe:
    """One fine-tune's training recipe (data_gen.finetune)."""
    method: str = field(default="full", metadata=choices("full", "lora"))
    lora_rank: int = field(default=16, metadata=number(1, integer=True))
    lora_alpha: Union[int, float] = field(default=16, metadata=number(0, above=True))
    lora_targets: Any = field(default_factory=lambda: ["qkv"])   # module-name patterns (a list, or one str)
    lora_dropout: float = field(default=0.0, metadata=number(0, 1))
    lr: float = field(default=1e-3, metadata=number(0, above=True))
    epochs: int = field(default=1, metadata=number(1, integer=True))
    batch_size: int = field(default=64, metadata=number(1, integer=True))
    seed: int = 0
    max_steps: Optional[int] = field(default=None, metadata=number(1, integer=True, optional=True))  # step cap
    optimizer: str = field(default="adamw", metadata=choices("adamw", "adam", "sgd"))
    weight_decay: float = field(default=0.0, metadata=number(0))
    momentum: float = field(default=0.9, metadata=number(0, 1))   # sgd only
    scheduler: str = field(default="constant", metadata=choices("constant", "cosine"))  # cosine: to 0 after warmup
    warmup_steps: int = field(default=0, metadata=number(0, integer=True))
    augment: Any = field(default_factory=list)   # any of "flip" (horizontal), "crop" (pad 4 + random crop)


@dataclass
class FullMethod:
    """A `full` method block: its task pool, the built-in tasks' split sizes, and how each recipe key is drawn."""
    tasks: Optional[List[str]] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    lr: Any = None
    epochs: Any = None
    batch_size: Any = None
    max_steps: Any = None
    optimizer: Any = None
    weight_decay: Any = None
    momentum: Any = None
    scheduler: Any = None
    warmup_steps: Any = None
    augment: Any = None


@dataclass
class LoraMethod(FullMethod):
    """A `lora` method block: a full block's keys and the LoRA recipe keys."""
    lora_rank: Any = None
    lora_alpha: Any = None
    lora_targets: Any = None
    lora_dropout: Any = None


@dataclass
class Methods:
    """The method blocks of a graph; a fine-tune picks one of those set (null: not used, how a derived config
    drops an inherited block)."""
    full: Optional[FullMethod] = None
    lora: Optional[LoraMethod] = None


@dataclass
class SmokeConfig:
    """data_gen.smoke: the check run of `smoke=true` (data_gen/smoke.py)."""
    roots: int = 1
    depth: Optional[int] = 2
    children: Any = 2                                  # an int, or one int per level
    steps: int = 3
    batch_size: int = 8
    examples: int = 16
    archs: Dict[str, str] = field(default_factory=dict)   # hf: repo -> timm architecture


@dataclass
class DataGenConfig:
    """The `data_gen` config group: one model graph (the comments of conf/data_gen/base.yaml say what each does)."""
    name: str = MISSING
    dir: str = MISSING
    seed: int = MISSING
    num_threads: Optional[int] = field(default=None, metadata=number(1, integer=True, optional=True))
    workers: Any = field(default="auto", metadata=number(1, integer=True, also=("auto",)))   # auto | a number
    accelerator: str = "cpu"
    devices: Any = 1
    precision: Any = "auto"
    image_size: int = 32
    cache_dir: str = MISSING
    data_dir: str = MISSING
    force: bool = False
    checkpoint_every: Optional[int] = None
    executor: str = "inline"
    max_resubmits: int = 2
    progress: bool = True
    roots: List[Any] = MISSING                         # root specs (data_gen.spec checks them)
    depth: int = field(default=2, metadata=number(0, integer=True))
    children: Any = 4                                  # an int, or one int per level
    methods: Methods = field(default_factory=Methods)
    smoke: SmokeConfig = field(default_factory=SmokeConfig)
