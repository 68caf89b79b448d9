"""Smoke runs: check a paper-scale graph config end to end without the hub or the datasets.

`python run.py +experiment=graph_ft smoke=true` builds, through the same code (spec, workers or SLURM arrays,
Lightning Trainer, weights, records), a small version of the configured graph:
- its own folder (`<dir>_smoke`), so the real graph is never touched;
- the first `data_gen.smoke.roots` roots and a `depth` x `children` tree below each (the nodes are the real
  graph's nodes with those ids: same task, method, recipe and seed);
- hub roots (`timm:`, `hf:`) replaced by randomly initialised models of the same architecture
  (`random:<timm arch>:<seed>`); built-in roots and local files are kept;
- every fine-tune capped at `steps` optimizer steps of `batch_size` images;
- VTAB tasks read from tensorflow-datasets' mock data (`examples` random examples per split; `mock_vtab`).
So the real architecture (ViT-B/16, ResNet-50), the real input size and the real Trainer options run, and the
timings and memory of a step are the real ones; the accuracies mean nothing.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from common.schema import merge_options
from common.seed import derive_seed
from data_gen.config import SmokeConfig

RANDOM_PREFIX = "random:"
# Objects per CLEVR image (its count task has 3..10 objects): mock object lists are cut or tiled into this range.
MOCK_OBJECTS = (3, 10)


def smoke_settings(dg: Mapping) -> dict[str, Any]:
    """`dg["smoke"]` with defaults (data_gen.config.SmokeConfig) filled in for the keys unset or null; unknown keys
    are errors. `enabled` (set by `smoke_config`, never by a config file) is passed through."""
    given = {k: v for k, v in dict(dg.get("smoke") or {}).items() if v is not None}
    enabled = {"enabled": given.pop("enabled")} if "enabled" in given else {}
    out = {**merge_options(SmokeConfig, given, "data_gen.smoke"), **enabled}
    for key in ("roots", "steps", "batch_size", "examples"):
        if int(out[key]) < 1:
            raise ValueError(f"data_gen.smoke.{key} must be >= 1, got {out[key]}")
    return out


def root_arch(root: Mapping, archs: Mapping[str, str]) -> str | None:
    """The timm architecture a hub root would load (None for a root that needs no hub: built-in, local file).

    Raises:
        ValueError: a `hf:` root whose architecture is neither given (`arch:`) nor in `archs`.
    """
    source = str(root["source"])
    if root.get("arch") and source.startswith(("timm:", "hf:")):
        return str(root["arch"])
    if source.startswith("timm:"):
        return source.removeprefix("timm:")
    if source.startswith("hf:"):
        repo = source.removeprefix("hf:")
        if repo not in archs:
            raise ValueError(f"smoke run: root {root['id']!r} ({source}): its architecture is unknown without the "
                             f"hub; give the root an `arch:` or add it to data_gen.smoke.archs")
        return str(archs[repo])
    return None


def smoke_config(dg: Mapping) -> dict[str, Any]:
    """The smoke run's `data_gen` config (a new dict): see the module docstring."""
    settings = smoke_settings(dg)
    out = copy.deepcopy(dict(dg))
    out["name"] = f"{dg['name']}_smoke"
    out["dir"] = str(Path(dg["dir"]).with_name(Path(dg["dir"]).name + "_smoke"))
    seed = int(dg.get("seed", 0))
    roots = []
    for root in list(dg["roots"])[:int(settings["roots"])]:
        arch = root_arch(root, settings["archs"])
        if arch is not None:
            root = {**root, "source": f"{RANDOM_PREFIX}{arch}:{derive_seed(seed, 'smoke-root', root['id'])}"}
            root.pop("arch", None)
        roots.append(root)
    out["roots"] = roots
    if settings.get("depth") is not None:
        out["depth"] = int(settings["depth"])
    if settings.get("children") is not None:
        out["children"] = settings["children"]
    out["smoke"] = {**settings, "enabled": True}
    return out


def smoke_job(job: Mapping, settings: Mapping) -> dict:
    """A fine-tune's job capped for a smoke run (roots are returned unchanged)."""
    job = copy.deepcopy(dict(job))
    if job["parent"] is None:
        return job
    job["recipe"]["max_steps"] = int(settings["steps"])
    job["recipe"]["batch_size"] = int(settings["batch_size"])
    if str(job["task"]).split("/", 1)[0] in ("vtab", "vtab10k"):
        job["data"]["mock"] = int(settings["examples"])
    return job


def random_root(source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """`random:<timm arch>:<seed>`: (arch, float32 weights) of a randomly initialised model, a pure function of
    the source (the global torch random state is left as it was)."""
    from data_gen.models import create_model, trainable_state

    spec = source.removeprefix(RANDOM_PREFIX)
    arch, _, seed = spec.rpartition(":")
    if not arch or not seed.isdigit():
        raise ValueError(f"root {source!r}: expected '{RANDOM_PREFIX}<timm arch>:<seed>'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = create_model(arch, num_classes=1000)
    return arch, trainable_state(model)


def consistent_objects(example: dict) -> dict:
    """A mock example whose `objects` lists (CLEVR, KITTI) agree in length, within `MOCK_OBJECTS`.

    tfds' random mock draws each per-object field with its own random length, so derived labels (object count,
    nearest vehicle) would fail or fall outside the task's classes.
    """
    objects = example.get("objects")
    if not isinstance(objects, dict) or not objects:
        return example
    lengths = [len(v) for v in objects.values() if np.ndim(v) >= 1]
    if not lengths:
        return example
    n = min(max(min(lengths), MOCK_OBJECTS[0]), MOCK_OBJECTS[1])

    def fit(v: Any) -> Any:
        if np.ndim(v) < 1 or len(v) == 0:
            return v
        reps = -(-n // len(v))
        return np.concatenate([np.asarray(v)] * reps)[:n]
    return {**example, "objects": {k: fit(v) for k, v in objects.items()}}


@contextlib.contextmanager
def mock_vtab(examples: int) -> Iterator[None]:
    """While open, VTAB tasks load tensorflow-datasets' random mock data (`examples` per split, whatever the
    slice), with object lists made consistent (`consistent_objects`). Nothing is read from or written to disk.
    """
    from unittest import mock

    from data_gen.tasks.vtab import import_tfds

    tfds = import_tfds()  # after torch (see data_gen/tasks/vtab.py)
    import tensorflow as tf

    with tfds.testing.mock_data(num_examples=int(examples)):
        mocked = tfds.core.dataset_builder.FileReaderBuilder._as_dataset

        def as_dataset(self: Any, *args: Any, **kwargs: Any):
            ds = mocked(self, *args, **kwargs)
            if "objects" not in ds.element_spec:
                return ds

            def examples_() -> Iterator[dict]:
                for ex in tfds.as_numpy(ds):
                    yield consistent_objects(ex)
            return tf.data.Dataset.from_generator(examples_, output_signature=ds.element_spec)

        with mock.patch.object(tfds.core.dataset_builder.FileReaderBuilder, "_as_dataset", as_dataset), \
                mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True):
            yield
