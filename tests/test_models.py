"""Model creation, input normalisation and root loading (local files; hub roots offline fail fast and clearly).
All weights here are random (synthetic); no test touches the network."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from data_gen import models, sources
from data_gen.models import Preprocess, classifier_name, create_model
from data_gen.sources import RootUnavailableError, load_root


@pytest.mark.parametrize("arch,head", [("vit_mini", "head"), ("resnet_mini", "fc")])
def test_builtin_archs_forward_on_uint8(arch, head):
    model = create_model(arch, 7)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert model(Preprocess.for_model(model)(x)).shape == (2, 7)
    assert classifier_name(model) == head
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 5e5  # "mini": fine-tunes take seconds on CPU


def test_timm_names_and_unknown_arch():
    model = create_model("resnet18", 4)
    assert model.fc.out_features == 4 and classifier_name(model) == "fc"
    with pytest.raises(ValueError, match="unknown arch 'no_such_net'"):
        create_model("no_such_net", 3)


def test_preprocess_normalises_and_resizes():
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(32, 32))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 32, 32)
    y = pre(x)
    assert torch.allclose(y[0], torch.full_like(y[0], -1.0)) and torch.allclose(y[1], torch.ones_like(y[1]))
    assert pre(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).shape == (1, 3, 32, 32)


def test_load_local_safetensors(tmp_path):
    state = create_model("vit_mini", 5).state_dict()
    with_meta, bare = tmp_path / "a.safetensors", tmp_path / "b" / "w.safetensors"
    bare.parent.mkdir()
    save_file(state, str(with_meta), metadata={"arch": "vit_mini"})
    save_file(state, str(bare))
    arch, loaded = load_root(str(with_meta), cache_dir=tmp_path)
    assert arch == "vit_mini" and all(torch.equal(loaded[k], state[k]) for k in state)
    assert load_root({"root": str(bare), "arch": "vit_mini"}, cache_dir=tmp_path)[0] == "vit_mini"
    ours = models.save_weights(tmp_path / "c.safetensors", state, {"arch": "vit_mini", "step": 3})
    assert models.weights_info(ours) == {"arch": "vit_mini", "step": 3}
    assert load_root(str(ours), cache_dir=tmp_path)[0] == "vit_mini"
    with pytest.raises(ValueError, match="architecture unknown"):
        load_root(str(bare), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_root(str(tmp_path / "missing.safetensors"), cache_dir=tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_root(str(tmp_path / "junk.safetensors"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="expected 'builtin:"):
        load_root("vit_mini", cache_dir=tmp_path)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Point the Hugging Face cache at an empty folder so nothing can be found locally."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("root", ["timm:vit_tiny_patch16_224.augreg_in21k", "hf:timm/vit_tiny_patch16_224.augreg_in21k"])
def test_hub_root_offline_env_fails_clearly(tmp_path, monkeypatch, empty_hub_cache, root):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RootUnavailableError, match="HF_HUB_OFFLINE is set.*safetensors"):
        load_root(root, cache_dir=tmp_path)


def test_hub_root_unreachable_endpoint_fails_clearly(tmp_path, monkeypatch, empty_hub_cache):
    """No HF_HUB_OFFLINE: the hub endpoint is probed (here a closed local port) instead of retried."""
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert "unreachable" in sources.hub_offline_reason()
    with pytest.raises(RootUnavailableError, match="127.0.0.1:9 is unreachable.*local Hugging Face cache"):
        load_root("timm:vit_tiny_patch16_224.augreg_in21k", cache_dir=tmp_path)
    assert constants.HF_HUB_OFFLINE is False  # the offline switch is restored after the call


def test_transformers_vit_names_convert_to_timm():
    """A transformers-format ViT state dict (made here from a random timm vit_mini by renaming) maps back."""
    timm_state = create_model("vit_mini", 0).state_dict()
    hf = {"vit.embeddings.cls_token": timm_state["cls_token"],
          "vit.embeddings.position_embeddings": timm_state["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
          "vit.layernorm.weight": timm_state["norm.weight"], "vit.layernorm.bias": timm_state["norm.bias"],
          "vit.pooler.dense.weight": torch.zeros(64, 64)}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(4):
        for p in ("weight", "bias"):
            for t, h in names.items():
                hf[f"vit.encoder.layer.{i}.{h}.{p}"] = timm_state[f"blocks.{i}.{t}.{p}"]
            q, k, v = timm_state[f"blocks.{i}.attn.qkv.{p}"].chunk(3)
            for n, x in zip(("query", "key", "value"), (q, k, v)):
                hf[f"vit.encoder.layer.{i}.attention.attention.{n}.{p}"] = x
    out = sources.hf_vit_to_timm(hf, depth=4)
    assert set(out) == set(timm_state) and all(torch.equal(out[k], timm_state[k]) for k in out)
    assert sources.vit_arch_from_hf({"hidden_size": 768, "patch_size": 16, "image_size": 224}) == \
        "vit_base_patch16_224"
