"""Real-world inputs, offline, on folders the tests write (issue 13, item 7): a Hugging Face cache, PEFT adapter
folders, and a text file of Hugging Face repo ids (cached, offline, and a mocked download)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from common.errors import InputError
from recovery.checkpoints import CheckpointError, discover
from recovery.reader import ModelReader
from recovery.synthetic import mlp_shapes
from tests.recovery_inputs import forest, run_cli, write_truth

SHAPES = mlp_shapes((16, 32, 32, 10))


def _cache_repo(cache: Path, repo: str, files: dict[str, bytes], rev: str = "0" * 40) -> Path:
    """A hub-cache entry laid out as huggingface_hub does: blobs/<sha256> + snapshots/<rev>/<file> symlinks."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    snap = entry / "snapshots" / rev
    snap.mkdir(parents=True)
    (entry / "blobs").mkdir(exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(rev)
    for name, data in files.items():
        blob = entry / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    return snap


def _st_bytes(tensors: dict[str, np.ndarray], tmp: Path) -> bytes:
    save_file(tensors, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _hub_cache(cache: Path, tmp: Path) -> tuple[dict, list]:
    """Two trees of 3 models as ORG/NAME repos in a cache; returns (models by repo id, edges by repo id)."""
    models, edges = forest(SHAPES, n_trees=2, children=2, grandchildren=0, seed=5)
    repo = {m: f"org{m[1]}/{m.replace('_', '-')}" for m in models}
    for m, tensors in models.items():
        _cache_repo(cache, repo[m], {"model.safetensors": _st_bytes(tensors, tmp / "x.safetensors"),
                                     "config.json": b"{}"})
    return {repo[m]: t for m, t in models.items()}, [(repo[p], repo[c]) for p, c in edges]


def test_hugging_face_cache_folder(tmp_path):
    """A hub cache: each models--ORG--NAME is one model named ORG/NAME; an entry without weights is left out."""
    from recovery.stage import recover

    cache = tmp_path / "hub"
    models, edges = _hub_cache(cache, tmp_path)
    _cache_repo(cache, "org9/tokenizer-only", {"tokenizer.json": b"{}"})
    (cache / ".locks").mkdir()
    (cache / "version.txt").write_text("1")
    truth = write_truth(tmp_path / "truth.json", models, edges)
    res = recover(cache, ground_truth=truth, output_dir=tmp_path / "out", plot=False, quiet=True)
    assert res["metrics"]["edge_accuracy"] == 1.0
    assert {n["id"] for n in res["tree"]["nodes"]} == set(models)
    assert "no weight file in this cached snapshot" in res["tree"]["excluded"]["org9/tokenizer-only"]
    child = next(n for n in res["tree"]["nodes"] if n["id"] == "org0/t0-c1")
    assert child["model_card"] == "base_model: org0/t0-root\nbase_model_relation: finetune"


def test_cache_without_refs_uses_newest_snapshot_and_says_so(tmp_path):
    models, _ = forest(SHAPES, n_trees=1, children=1, grandchildren=0)
    old = _cache_repo(tmp_path, "o/a", {"model.safetensors": _st_bytes(models["t0_root"], tmp_path / "x.safetensors")},
                      rev="1" * 40)
    _cache_repo(tmp_path, "o/b", {"model.safetensors": _st_bytes(models["t0_c0"], tmp_path / "x.safetensors")})
    (tmp_path / "models--o--a" / "refs" / "main").unlink()
    newer = old.parent / ("2" * 40)
    shutil.copytree(old, newer, symlinks=True)
    os.utime(newer, (time.time() + 10, time.time() + 10))
    cat = discover(tmp_path)
    assert [m.id for m in cat.models] == ["o/a", "o/b"] and cat.models[0].path == newer
    assert any("2 cached revisions and no refs/main" in n for n in cat.warnings)


# ------------------------------------------------------------------------------------------------ PEFT adapters
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.out = torch.nn.Linear(32, 10)


def _peft_adapter(folder: Path, base: _Net, base_name: str, seed: int, **lora) -> dict[str, np.ndarray]:
    """Save a PEFT LoRA adapter of `base` into `folder`; return the merged weights PEFT itself computes."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_copy(base), LoraConfig(target_modules=["fc1", "fc2"], **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(folder))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_name
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return {k: v.numpy() for k, v in model.merge_and_unload().state_dict().items()}


def _copy(net: _Net) -> _Net:
    other = _Net()
    other.load_state_dict(net.state_dict())
    return other


@pytest.mark.parametrize("lora", [{"r": 4, "lora_alpha": 8}, {"r": 2, "lora_alpha": 16, "use_rslora": True}])
def test_peft_adapter_reads_as_merged_weights(tmp_path, lora):
    """The adapter model reads exactly as PEFT's merge_and_unload (W + scaling * B @ A)."""
    torch.manual_seed(0)
    base = _Net()
    save_file({k: v.numpy() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    save_file({k: v.numpy() + 0.01 for k, v in base.state_dict().items()}, str(tmp_path / "other.safetensors"))
    merged = _peft_adapter(tmp_path / "lora1", base, "base", seed=1, **lora)
    cat = discover(tmp_path)
    ada = next(m for m in cat.models if m.id == "lora1")
    assert ada.fmt == "peft" and ada.adapter.base.id == "base"
    with ModelReader(ada) as r:
        for k, v in merged.items():
            np.testing.assert_allclose(r.get(k), v, rtol=1e-5, atol=1e-6)


def test_adapters_in_recovery_and_missing_base(tmp_path):
    """A LoRA adapter is recovered as an `adapter` child of its base; one whose base is absent is left out with why."""
    from recovery.stage import recover

    torch.manual_seed(0)
    base = _Net()
    with torch.no_grad():   # heavy-tailed base weights, as a trained model's
        for p in base.parameters():
            p.copy_(torch.distributions.Laplace(0.0, 0.05).sample(p.shape))
    sd = {k: v.numpy() for k, v in base.state_dict().items()}
    (tmp_path / "in" / "hub-base").mkdir(parents=True)
    save_file(sd, str(tmp_path / "in" / "hub-base" / "model.safetensors"))
    rng = np.random.default_rng(0)
    save_file({k: (v + 0.3 * v.std() * rng.standard_normal(v.shape)).astype(np.float32) for k, v in sd.items()},
              str(tmp_path / "in" / "ft.safetensors"))
    _peft_adapter(tmp_path / "in" / "my-lora", base, "someorg/hub-base", seed=2, r=4, lora_alpha=8)
    _peft_adapter(tmp_path / "in" / "orphan-lora", base, "someorg/absent-model", seed=3, r=4, lora_alpha=8)
    res = recover(tmp_path / "in", output_dir=tmp_path / "out", plot=False, quiet=True)
    tree = res["tree"]
    nodes = {n["id"]: n for n in tree["nodes"]}
    assert set(nodes) == {"hub-base", "ft", "my-lora"}
    assert nodes["my-lora"]["base_model"] == "hub-base" and nodes["my-lora"]["base_model_relation"] == "adapter"
    assert "someorg/absent-model" in tree["excluded"]["orphan-lora"]
    assert "not among the input models" in tree["excluded"]["orphan-lora"]
    assert any(w.startswith("excluded model orphan-lora:") for w in res["warnings"])


def test_adapter_folder_errors(tmp_path):
    """Half an adapter, a non-LoRA adapter: left out, each with the file and the problem."""
    models, _ = forest(SHAPES, n_trees=1, children=1, grandchildren=0)
    for k, v in models.items():
        save_file(v, str(tmp_path / f"{k}.safetensors"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "t0_root"}))
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3",
                                                                       "base_model_name_or_path": "t0_root"}))
    save_file({"base_model.model.layers.0.ia3_l": np.ones((32, 1), np.float32)},
              str(tmp_path / "ia3" / "adapter_model.safetensors"))
    cat = discover(tmp_path)
    assert "adapter_config.json: PEFT adapter config without its weights" in cat.excluded["half"]
    assert "only LoRA adapters are read" in cat.excluded["ia3"]
    with pytest.raises(CheckpointError, match="without its weights.*recovery.strict=true"):
        discover(tmp_path, strict=True)


# ------------------------------------------------------------------------------------------------ repo-id files
def test_ids_file_offline_reads_the_local_cache(tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1, as in every test), ids already in the cache are read from it."""
    from recovery.stage import recover

    cache = tmp_path / "hub"
    models, edges = _hub_cache(cache, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ids = tmp_path / "ids.txt"
    ids.write_text("# models to compare\n" + "\n".join(sorted(models)) + "\n\n")
    res = recover(ids, ground_truth=write_truth(tmp_path / "t.json", models, edges), plot=False, quiet=True)
    assert res["metrics"]["edge_accuracy"] == 1.0 and res["tree"]["info"]["layout"] == "hub ids"
    assert any("read all 6 models from the local cache" in w for w in res["warnings"])


def test_ids_file_offline_fails_fast_naming_what_to_do(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ids = tmp_path / "ids.txt"
    ids.write_text("google/vit-base-patch16-224\nfacebook/dino-vitb16\n")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"ids\.txt: cannot download .*HF_HUB_OFFLINE is set.*input=") as err:
        discover(ids)
    assert time.perf_counter() - t0 < 5 and "google/vit-base-patch16-224" in str(err.value)
    ids.write_text("not a repo id!\n")
    with pytest.raises(InputError, match=r"ids\.txt:1: 'not a repo id!' is not a Hugging Face repo id"):
        discover(ids)


def test_ids_file_download_fetches_only_weight_files(tmp_path, monkeypatch):
    """Online path with the hub client replaced by a local fake: only the weight files are fetched; an id that
    cannot be fetched is left out with the reason."""
    import recovery.hub as hub

    models, _ = forest(SHAPES, n_trees=1, children=2, grandchildren=0)
    remote = {f"org/{m.replace('_', '-')}": {"model.safetensors": _st_bytes(t, tmp_path / "x.safetensors"),
                                             "pytorch_model.bin": b"unused", "README.md": b"# card"}
              for m, t in models.items()}
    fetched: list[tuple[str, str]] = []

    def list_files(repo, revision):
        if repo not in remote:
            raise OSError(f"404 Repository Not Found for {repo}")
        return sorted(remote[repo])

    def download(repo, filename, revision, cache):
        fetched.append((repo, filename))
        snap = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / ("f" * 40)
        snap.mkdir(parents=True, exist_ok=True)
        (snap / filename).write_bytes(remote[repo][filename])
        return snap / filename

    monkeypatch.setattr(hub, "offline_reason", lambda timeout=hub.PROBE_TIMEOUT_S: None)
    monkeypatch.setattr(hub, "_list_files", list_files)
    monkeypatch.setattr(hub, "_download", download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(sorted(remote)) + "\nghost/missing-model\n")
    cat = discover(ids)
    assert [m.id for m in cat.models] == sorted(remote)
    assert {f for _, f in fetched} == {"model.safetensors"} and len(fetched) == 3
    assert "cannot download ghost/missing-model (OSError: 404 Repository Not Found" in cat.excluded["ghost/missing-model"]
    assert hub.pick_weight_files(["model.safetensors.index.json", "model-00001-of-00002.safetensors"]) == \
        ["model.safetensors.index.json"]
    assert hub.pick_weight_files(["adapter_config.json", "adapter_model.safetensors", "README.md"]) == \
        ["adapter_config.json", "adapter_model.safetensors"]
    assert hub.pick_weight_files(["README.md", "sub/model.safetensors"]) == []


@pytest.mark.slow
def test_ids_file_offline_through_the_command_line(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("google/vit-base-patch16-224\n")
    (tmp_path / "hub").mkdir()
    res = run_cli(tmp_path, f"input={ids}", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert "cannot download ['google/vit-base-patch16-224']" in line and "input=" in line


def test_gpt2_folders_and_peft_adapters_on_its_conv1d(tmp_path):
    """A tree of real transformers GPT-2 folders (one sharded) and PEFT LoRA adapters on its fused Conv1D `c_attn`
    (fan_in_fan_out): adapters read as PEFT merges them, and every edge is recovered, the adapters' too (they equal
    their parents on the dense layers: recovery.ties orders them on c_attn)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from recovery.stage import recover
    from recovery.synthetic import finetune

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    root = GPT2LMHeadModel(cfg)
    with torch.no_grad():   # heavy-tailed weights, as a trained model's
        for p in root.parameters():
            p.copy_(torch.distributions.Laplace(0.0, 0.05).sample(p.shape))
    rng = np.random.default_rng(0)
    models, edges = {"root": root}, [("root", "ft1"), ("root", "ft2"), ("ft1", "ft11")]
    for parent, child in edges:
        sd = {k: v.numpy() for k, v in models[parent].state_dict().items()}
        models[child] = GPT2LMHeadModel(cfg)
        models[child].load_state_dict({k: torch.from_numpy(v) for k, v in finetune(sd, rng, scale=2e-2).items()})
    for name, m in models.items():
        m.save_pretrained(str(tmp_path / "in" / name), max_shard_size="40KB" if name == "ft1" else "5GB")
    merged = {}
    for i, parent in enumerate(["root", "ft2"]):
        base = GPT2LMHeadModel(cfg)
        base.load_state_dict(models[parent].state_dict())
        lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        folder = tmp_path / "in" / f"lora{i}"
        lora.save_pretrained(str(folder))
        adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**adapter_cfg, "base_model_name_or_path": parent}))
        merged[folder.name] = {k: v.numpy() for k, v in lora.merge_and_unload().state_dict().items()}
        edges.append((parent, folder.name))
    assert len(list((tmp_path / "in" / "ft1").glob("model-*.safetensors"))) > 1
    cat = discover(tmp_path / "in")
    ada = next(m for m in cat.models if m.id == "lora0")
    with ModelReader(ada) as r:
        for k in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"):
            np.testing.assert_allclose(r.get(k), merged["lora0"][k], rtol=1e-5, atol=1e-6)
    res = recover(tmp_path / "in", distance={"metric": "l2"}, cluster={"n_trees": 1}, plot=False, quiet=True)
    got = {(e["parent"], e["child"]): e["base_model_relation"] for e in res["tree"]["edges"]}
    assert set(got) == set(edges)
    assert got[("root", "lora0")] == got[("ft2", "lora1")] == "adapter" and got[("root", "ft1")] == "finetune"
    assert sorted(map(sorted, res["tree"]["direction_ties"]["groups"])) == [["ft2", "lora1"], ["lora0", "root"]]
    # the paper's LoRA rule by name: direction on the q / k / v column blocks of c_attn, no ties left
    res = recover(tmp_path / "in", distance={"metric": "l2"}, direction={"kinds": ["query", "key", "value"]},
                  cluster={"n_trees": 1}, plot=False, quiet=True)
    assert res["tree"]["direction_layers"][:3] == [f"transformer.h.0.attn.c_attn.weight[{k}]" for k in "qkv"]
    assert res["tree"]["direction_ties"]["groups"] == []
    assert {(e["parent"], e["child"]) for e in res["tree"]["edges"]} == set(edges)
