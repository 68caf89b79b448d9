"""The recovery options (the `recovery` config group, conf/recovery/*.yaml) as typed dataclasses with their defaults.

`RecoveryConfig` is Hydra's `recovery/schema` (common.schema.register_schemas), which conf/recovery/paper.yaml
extends: a misspelled option fails when the config is composed. The Python entry points check options given as
plain dicts against the same dataclasses (common.schema.merge_options): `recovery.stage.recover`, `solve`,
`recovery.weights.analyze_folder`, `recovery.mother.tree_options`, `recovery.sparse.sparse_options`.
Allowed values that a type cannot express are each field's `choices`, checked by merge_options.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from common.schema import check, choices, number, pattern
from recovery.cues import CUES
from recovery.direction import STATS
from recovery.ties import TIES

METRICS = ("l2", "rms", "lora_rank", "auto")
# What `tree.cues: null` means: the paper's direction score, kurtosis, alone.
PAPER_CUES: Dict[str, float] = {"kurtosis": 1.0}

# tree.cues: weights >= 0 of known cues (recovery.cues.CUES).
_CUE_WEIGHTS = check(lambda v: v is None or all(k in CUES and number(0)["check"][0](w) for k, w in v.items()),
                     f"map cues of {list(CUES)} to finite weights >= 0")


@dataclass
class LayersOptions:
    """recovery.layers: the tensors that take part in the distances (recovery.layers.choose_layers)."""
    kinds: List[str] = field(default_factory=lambda: ["all_2d"])
    regex: Optional[str] = field(default=None, metadata=pattern())
    exclude_heads: bool = True
    fallback: bool = True            # no tensor of the kinds: every 2-D weight instead (one warning)


@dataclass
class DistanceOptions:
    """recovery.distance: the pairwise distance (paper Eq. 1 and 2)."""
    metric: str = field(default="auto", metadata=choices(*METRICS))
    rank_tol: Any = field(default="weight", metadata=number(0, also=("weight", "delta")))  # weight | delta | a number
    rank_reduce: str = field(default="max", metadata=choices("max", "sum"))                # over layers
    # metric auto: a layer's low-rank share from which it enters the rank distance
    low_rank_share: float = field(default=0.5, metadata=number(0, 1))
    seed: int = 0


@dataclass
class DirectionOptions:
    """recovery.direction: the direction score (paper Eq. 3) and the per-layer cues (recovery.cues)."""
    stat: str = field(default="kurtosis", metadata=choices(*STATS))
    kinds: List[str] = field(default_factory=lambda: ["dense"])
    regex: Optional[str] = field(default=None, metadata=pattern())
    cues: bool = False
    seed: int = 0
    # models equal on every direction layer: order them on the other selected layers (recovery.ties) or leave them tied
    ties: str = field(default="other_layers", metadata=choices(*TIES))


@dataclass
class ClusterOptions:
    """recovery.cluster: trees from hierarchical clustering on l2 (recovery.cluster.cluster_trees)."""
    n_trees: Any = field(default="auto", metadata=number(1, integer=True, also=("auto", "truth")))
    linkage: str = "single"
    min_gap_ratio: float = field(default=3.0, metadata=number(1))     # merge-height ratios are >= 1
    threshold: Optional[float] = field(default=None, metadata=number(0, above=True, optional=True))


@dataclass
class TreeOptions:
    """recovery.tree: the tree inside each cluster (recovery.mother; orient=root: recovery.orient)."""
    c: float = field(default=0.3, metadata=number(0))
    stage_order: bool = True
    orient: str = field(default="edges", metadata=choices("edges", "root"))
    structure: str = field(default="mst", metadata=choices("mst", "mdst"))
    cues: Optional[Dict[str, float]] = field(default=None, metadata=_CUE_WEIGHTS)   # cue -> weight; null: PAPER_CUES
    cue_reduce: str = field(default="sum", metadata=choices("sum", "votes"))
    stage: str = field(default="given", metadata=choices("given", "auto"))
    siblings: bool = False
    sibling_tau: float = field(default=0.5, metadata=number(0, 1))
    missing: bool = False
    missing_ratio: float = field(default=0.75, metadata=number(0, 1, above=True))
    missing_min_shared: float = field(default=0.0, metadata=number(0))
    missing_siblings: bool = False
    max_hops: Optional[int] = field(default=None, metadata=number(1, integer=True, optional=True))


@dataclass
class SparseOptions:
    """recovery.sparse: nearest-neighbour candidate edges (recovery.sparse)."""
    knn: int = field(default=96, metadata=number(1, integer=True))
    pool: int = field(default=16, metadata=number(1, integer=True))
    project_dim: Optional[int] = field(default=64, metadata=number(1, integer=True, optional=True))
    auto_above: int = field(default=20000, metadata=number(1, integer=True))
    blocks: int = field(default=1, metadata=number(1, integer=True))
    strip: int = field(default=512, metadata=number(1, integer=True))
    seed: int = 0
    exact_block: int = field(default=2048, metadata=number(1, integer=True))
    link_sample: int = field(default=64, metadata=number(1, integer=True))
    dense_max: int = field(default=2000, metadata=number(1, integer=True))


@dataclass
class RecoveryConfig:
    """The `recovery` config group: the keyword arguments of recovery.stage.recover."""
    layers: LayersOptions = field(default_factory=LayersOptions)
    distance: DistanceOptions = field(default_factory=DistanceOptions)
    direction: DirectionOptions = field(default_factory=DirectionOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    tree: TreeOptions = field(default_factory=TreeOptions)
    plot: bool = True
    device: str = "auto"             # auto | cpu | cuda (recovery.kernels)
    direct_io: bool = True           # uncached tensors >= 1 MiB read with O_DIRECT (recovery.direct_io)
    strict: bool = False
    candidates: str = "auto"         # dense | knn | auto (recovery.sparse.use_knn)
    sparse: SparseOptions = field(default_factory=SparseOptions)
