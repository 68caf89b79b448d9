"""VTAB tasks through tensorflow-datasets: splits, label derivations, resizing, offline checks.

Protocol (VTAB-1k as in the VPT-style PyTorch ports of google-research/task_adaptation):
    vtab/<task>:    train = train800 = <train split>[:800], val = val200 (task table below), no augmentation.
    vtab10k/<task>: train = <train split>[:10000] (the paper's 10K-sample FT split), val = the same val200,
                    for tasks whose train split holds 10000 examples before val200 starts.
The test split is recorded in meta but not loaded (the model graphs need only a held-out val accuracy). The
reference script's final runs train on trainval[:1000] instead; we keep val200 held out to report accuracy.
Images are resized to image_size x image_size directly (bilinear, antialiased; no aspect-preserving crop, like
the reference), grey / binary images become RGB uint8.

TensorFlow must load after torch (loaded first, it segfaults at the first optimizer step), so tensorflow_datasets is
imported lazily, after torch._dynamo. Prepared data is looked up in $TFDS_DATA_DIR if set, else
data_dir/tensorflow_datasets, else tfds' default (~/tensorflow_datasets). A dataset that is not prepared fails at
once with the `tfds build` command to run, unless allow_download=True.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

TRAIN_1K, VAL_1K, TRAIN_10K = 800, 200, 10_000


class VtabUnavailableError(FileNotFoundError):
    """A VTAB dataset is not prepared locally and downloads are not allowed."""


# ---------------------------------------------------------------------------------------- label derivations
def label_key(key: str) -> Callable[[dict], int]:
    """Label = example[key]."""
    def fn(ex: dict) -> int:
        return int(ex[key])
    fn.__doc__ = f"example[{key!r}]"
    return fn


def binned(key: str, num_original: int, num_classes: int) -> Callable[[dict], int]:
    """Label = floor(example[key] / (num_original / num_classes)) (dSprites binning)."""
    width = num_original / num_classes

    def fn(ex: dict) -> int:
        return int(np.floor(int(ex[key]) / width))
    fn.__doc__ = f"floor({key} / {width:g}): {num_original} values -> {num_classes} bins"
    return fn


def clevr_count(ex: dict) -> int:
    """number of objects - 3 (CLEVR has 3..10 objects -> 8 classes)"""
    return len(ex["objects"]["pixel_coords"]) - 3


CLEVR_DEPTH_EDGES = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
KITTI_DISTANCE_EDGES = np.array([-100.0, 8.0, 20.0, 999.0])
KITTI_VEHICLES = (0, 1, 2)  # object type ids of Car, Van, Truck in tfds kitti


def _bin_index(edges: np.ndarray, value: float) -> int:
    """Largest i with edges[i] < value (the reference's threshold rule)."""
    return int(np.searchsorted(edges, value, side="left")) - 1


def clevr_distance(ex: dict) -> int:
    """bin of the smallest object depth (pixel_coords[:, 2]) by edges [0, 8, 8.5, 9, 9.5, 10, 100] -> 6"""
    depth = np.asarray(ex["objects"]["pixel_coords"], np.float64).reshape(-1, 3)[:, 2]
    return _bin_index(CLEVR_DEPTH_EDGES, float(depth.min()))


def kitti_distance(ex: dict) -> int:
    """bin of the nearest Car/Van/Truck depth (location z; 1000 when none) by edges [-100, 8, 20, 999] -> 4"""
    kinds = np.asarray(ex["objects"]["type"]).reshape(-1)
    z = np.asarray(ex["objects"]["location"], np.float64).reshape(-1, 3)[:, 2]
    z = z[np.isin(kinds, KITTI_VEHICLES)]
    return _bin_index(KITTI_DISTANCE_EDGES, float(z.min(initial=1000.0)))


# ------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class VtabTask:
    """One VTAB task: tfds source, splits, label derivation."""
    tfds_name: str                  # "clevr", "sun397/tfds" (config after the slash)
    versions: tuple[str, ...]       # acceptable version patterns, preferred first
    group: str                      # natural | specialized | structured
    num_classes: int
    val: str                        # val200 split spec
    test: str                       # test split spec (recorded only)
    label: Callable[[dict], int]
    split_sizes: dict[str, int]     # number of examples per tfds split (for the split arithmetic checks)
    train: str = "train"            # split that train800 / train10k are the head of
    binary_image: bool = False      # dSprites stores {0, 1}
    manual: bool = False            # tfds needs a manual download


TASKS: dict[str, VtabTask] = {
    "caltech101": VtabTask("caltech101", ("3.*.*",), "natural", 102, "train[2754:2954]", "test", label_key("label"),
                           {"train": 3060, "test": 6084}),
    "cifar100": VtabTask("cifar100", ("3.*.*",), "natural", 100, "train[45000:45200]", "test", label_key("label"),
                         {"train": 50000, "test": 10000}),
    "dtd": VtabTask("dtd", ("3.*.*",), "natural", 47, "validation[:200]", "test", label_key("label"),
                    {"train": 1880, "validation": 1880, "test": 1880}),
    "oxford_flowers102": VtabTask("oxford_flowers102", ("2.*.*",), "natural", 102, "validation[:200]", "test",
                                  label_key("label"), {"train": 1020, "validation": 1020, "test": 6149}),
    "oxford_iiit_pet": VtabTask("oxford_iiit_pet", ("3.*.*", "4.*.*"), "natural", 37, "train[2944:3144]", "test",
                                label_key("label"), {"train": 3680, "test": 3669}),
    "sun397": VtabTask("sun397/tfds", ("4.*.*",), "natural", 397, "validation[:200]", "test", label_key("label"),
                       {"train": 76128, "validation": 10875, "test": 21750}),
    "svhn": VtabTask("svhn_cropped", ("3.*.*",), "natural", 10, "train[65931:66131]", "test", label_key("label"),
                     {"train": 73257, "test": 26032, "extra": 531131}),
    "patch_camelyon": VtabTask("patch_camelyon", ("2.*.*",), "specialized", 2, "validation[:200]", "test",
                               label_key("label"), {"train": 262144, "validation": 32768, "test": 32768}),
    "eurosat": VtabTask("eurosat/rgb", ("2.*.*",), "specialized", 10, "train[16200:16400]", "train[21600:]",
                        label_key("label"), {"train": 27000}),
    "resisc45": VtabTask("resisc45", ("3.*.*",), "specialized", 45, "train[18900:19100]", "train[25200:]",
                         label_key("label"), {"train": 31500}, manual=True),
    "diabetic_retinopathy": VtabTask("diabetic_retinopathy_detection/btgraham-300", ("3.*.*",), "specialized", 5,
                                     "validation[:200]", "test", label_key("label"),
                                     {"train": 35126, "validation": 10906, "test": 42670}, manual=True),
    "dmlab": VtabTask("dmlab", ("2.0.1",), "structured", 6, "validation[:200]", "test", label_key("label"),
                      {"train": 65550, "validation": 22628, "test": 22735}),
    "kitti_distance": VtabTask("kitti", ("3.1.0", "3.*.*"), "structured", 4, "validation[:200]", "test",
                               kitti_distance, {"train": 6347, "validation": 423, "test": 711}),
    "smallnorb_azimuth": VtabTask("smallnorb", ("2.*.*",), "structured", 18, "test[:200]", "test[50%:]",
                                  label_key("label_azimuth"), {"train": 24300, "test": 24300}),
    "smallnorb_elevation": VtabTask("smallnorb", ("2.*.*",), "structured", 9, "test[:200]", "test[50%:]",
                                    label_key("label_elevation"), {"train": 24300, "test": 24300}),
    "dsprites_location": VtabTask("dsprites", ("2.*.*",), "structured", 16, "train[589824:590024]", "train[663552:]",
                                  binned("label_x_position", 32, 16), {"train": 737280}, binary_image=True),
    "dsprites_orientation": VtabTask("dsprites", ("2.*.*",), "structured", 16, "train[589824:590024]",
                                     "train[663552:]", binned("label_orientation", 40, 16), {"train": 737280},
                                     binary_image=True),
    "clevr_count": VtabTask("clevr", ("3.*.*",), "structured", 8, "train[63000:63200]", "validation", clevr_count,
                            {"train": 70000, "validation": 15000, "test": 15000}),
    "clevr_distance": VtabTask("clevr", ("3.*.*",), "structured", 6, "train[63000:63200]", "validation",
                               clevr_distance, {"train": 70000, "validation": 15000, "test": 15000}),
}
# the paper's FT split (Appendix B, Table 2) used these with 10K training samples
PAPER_10K = ("cifar100", "svhn", "patch_camelyon", "clevr_count", "clevr_distance", "dmlab")


def task_names(variant: str = "vtab") -> list[str]:
    """Task names of "vtab" (all 19) or "vtab10k" (the paper's six FT datasets)."""
    if variant == "vtab":
        return list(TASKS)
    if variant == "vtab10k":
        return list(PAPER_10K)
    raise ValueError(f"unknown VTAB variant {variant!r}; known: 'vtab', 'vtab10k'")


# ------------------------------------------------------------------------------------------ split arithmetic
_SPLIT = re.compile(r"^(?P<split>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def split_range(spec: str, sizes: dict[str, int]) -> tuple[str, int, int]:
    """Resolve a tfds split spec like "train[2754:2954]", "test[50%:]" or "test" to (split, start, stop).

    Percent boundaries round like tfds (to the nearest example). Raises ValueError for unknown splits or
    ranges outside the split.
    """
    m = _SPLIT.match(spec.replace(" ", ""))
    if not m or m["split"] not in sizes:
        raise ValueError(f"cannot resolve split {spec!r} (known splits: {sorted(sizes)})")
    n = sizes[m["split"]]

    def bound(text: str | None, default: int) -> int:
        if text is None:
            return default
        v = int(round(float(text[:-1]) * n / 100)) if text.endswith("%") else int(text)
        return v + n if v < 0 else v

    start, stop = bound(m["start"], 0), bound(m["stop"], n)
    if not 0 <= start < stop <= n:
        raise ValueError(f"split {spec!r} resolves to [{start}:{stop}], outside {m['split']} of {n} examples")
    return m["split"], start, stop


def splits(task: str, variant: str = "vtab") -> dict[str, str]:
    """Pure split arithmetic of one task: {"train": spec, "val": spec, "test": spec}.

    train is the head of the task's train split (800 for "vtab", 10000 for "vtab10k"); raises ValueError when it
    would not fit or would overlap val200 (so "vtab10k" exists only where 10000 examples precede val200).
    """
    if task not in TASKS:
        raise KeyError(f"unknown VTAB task {task!r}; known: {sorted(TASKS)}")
    t = TASKS[task]
    n_train = {"vtab": TRAIN_1K, "vtab10k": TRAIN_10K}.get(variant)
    if n_train is None:
        raise ValueError(f"unknown VTAB variant {variant!r}; known: 'vtab', 'vtab10k'")
    out = {"train": f"{t.train}[:{n_train}]", "val": t.val, "test": t.test}
    tr, va = split_range(out["train"], t.split_sizes), split_range(out["val"], t.split_sizes)
    if va[2] - va[1] != VAL_1K:
        raise ValueError(f"{task}: val split {t.val!r} holds {va[2] - va[1]} examples, expected {VAL_1K}")
    if tr[0] == va[0] and tr[1] < va[2] and va[1] < tr[2]:
        raise ValueError(f"{variant}/{task}: train {out['train']} overlaps val {t.val}")
    return out


# ------------------------------------------------------------------------------------------------- loading
def tfds_dir(data_dir: str | Path | None) -> str | None:
    """Where prepared tfds data is looked up: $TFDS_DATA_DIR, else data_dir/tensorflow_datasets, else tfds' default."""
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"]
    return str(Path(data_dir) / "tensorflow_datasets") if data_dir is not None else None


def import_tfds() -> Any:
    """Import tensorflow_datasets after torch's dynamo (TensorFlow first segfaults at the first optimizer)."""
    import torch._dynamo  # noqa: F401  (must precede TensorFlow, see above)

    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("VTAB tasks need tensorflow-datasets (and importlib_resources, tensorflow-cpu): "
                          "pip install -e '.[vtab]'") from e
    return tfds


def get_builder(task: str, data_dir: str | Path | None, allow_download: bool) -> Any:
    """The tfds builder of a task, prepared (downloading only when allowed); else VtabUnavailableError."""
    tfds = import_tfds()
    t, where = TASKS[task], tfds_dir(data_dir)
    builders = []
    for version in t.versions:
        try:
            builders.append(tfds.builder(f"{t.tfds_name}:{version}", data_dir=where))
        except (AssertionError, ValueError):  # incl. DatasetNotFoundError
            continue  # this tfds release does not know that version
    if not builders:
        raise VtabUnavailableError(f"vtab/{task}: this tensorflow-datasets release has no {t.tfds_name} at "
                                   f"versions {t.versions}")
    for b in builders:
        if b.is_prepared():
            return b
    b = builders[0]
    if allow_download:
        b.download_and_prepare()
        return b
    shown = where or "~/tensorflow_datasets (tfds default)"
    manual = " It needs a manual download first: see `tfds build --help` (--manual_dir)." if t.manual else ""
    raise VtabUnavailableError(
        f"vtab/{task}: tfds dataset {t.tfds_name}:{'|'.join(t.versions)} is not prepared under {shown}. Prepare it "
        f"once with network access: `tfds build {t.tfds_name} --data_dir {where or '~/tensorflow_datasets'}`, or "
        f"pass allow_download=True, or set TFDS_DATA_DIR to where it is prepared.{manual}")


def iterate(builder: Any, split: str) -> Iterator[dict]:
    """Examples of `split` as numpy dicts, in file order (tf.data when TensorFlow is installed, else data_source)."""
    tfds = import_tfds()  # before TensorFlow: torch first (see import_tfds)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        yield from builder.as_data_source(split=split)
        return
    yield from tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))


def to_rgb_uint8(image: np.ndarray, binary: bool = False) -> np.ndarray:
    """An HxWxC image (C = 1 or 3, uint8) as uint8 [3, H, W]; binary {0, 1} images are scaled to {0, 255}."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if binary:
        image = np.where(image > 0, np.uint8(255), np.uint8(0))
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx1 or HxWx3 uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [3, H, W] to [3, size, size] (bilinear, antialiased when shrinking)."""
    if image.shape[1:] == (size, size):
        return image
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(image).unsqueeze(0).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0].numpy()


def collect(examples: Iterable[dict], task: str, size: int, *, limit: int | None = None,
            split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, size, size] and derived labels int64 [N] from numpy examples (at most `limit`)."""
    t = TASKS[task]
    xs, ys = [], []
    for i, ex in enumerate(examples):
        if limit is not None and i >= limit:
            break
        y = t.label(ex)
        if not 0 <= y < t.num_classes:
            raise ValueError(f"vtab/{task} {split} example {i}: derived label {y} outside [0, {t.num_classes}) "
                             f"({t.label.__doc__})")
        xs.append(resize(to_rgb_uint8(ex["image"], t.binary_image), size))
        ys.append(y)
    if not xs:
        raise ValueError(f"vtab/{task}: split {split!r} gave no examples")
    return np.stack(xs), np.asarray(ys, np.int64)


def load(variant: str, task: str, *, image_size: int, seed: int = 0, data_dir: str | Path | None = None,
         allow_download: bool = False):
    """Load vtab/<task> or vtab10k/<task> as a TaskData (cached under data_dir/<variant>/ when data_dir is set)."""
    from data_gen.tasks import _to_task
    from data_gen.tasks.store import load_arrays, save_arrays

    spec = splits(task, variant)
    t = TASKS[task]
    n_train = TRAIN_1K if variant == "vtab" else TRAIN_10K
    meta = {"source": variant, "task": task, "tfds_name": t.tfds_name, "versions": list(t.versions),
            "splits": spec, "label": t.label.__doc__, "image_size": image_size, "seed": seed,
            "protocol": "train = head of train split, val = val200; test not loaded; direct bilinear resize"}
    path = Path(data_dir) / variant / f"{task}-{image_size}.npz" if data_dir is not None else None
    if path is not None and path.exists():
        arrays, cached = load_arrays(path)
        if {k: cached.get(k) for k in meta if k != "seed"} == {k: v for k, v in meta.items() if k != "seed"}:
            return _to_task(f"{variant}/{task}", t.num_classes, t.group, arrays,
                            {**cached, "seed": seed, "cache": str(path)})
    builder = get_builder(task, data_dir, allow_download)
    x_tr, y_tr = collect(iterate(builder, spec["train"]), task, image_size, limit=n_train, split=spec["train"])
    x_va, y_va = collect(iterate(builder, spec["val"]), task, image_size, limit=VAL_1K, split=spec["val"])
    meta["tfds_version"] = str(builder.version)
    arrays = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
    if path is not None:
        save_arrays(path, arrays, meta)
    return _to_task(f"{variant}/{task}", t.num_classes, t.group, arrays, {**meta, "cache": str(path) if path else None})
