import pytest
import torch

from sam2ptq_core.sam2.loading import (
    ModelUnavailable,
    build_config,
    build_random,
    load_model,
    quantizable_linears,
    weights_sha256,
)
from tests.helpers import ARCH

# published image-encoder sizes of facebook/sam2.1-hiera-* and trunk linear counts
PUBLISHED = {"tiny": (27.2, 51), "small": (34.3, 67), "base-plus": (69.1, 99), "large": (212.7, 195)}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_random_init_architecture_matches_published_size(name):
    from transformers import Sam2Model
    with torch.device("meta"):
        m = Sam2Model(build_config(name))
    n = sum(p.numel() for p in m.vision_encoder.parameters()) / 1e6
    assert abs(n - PUBLISHED[name][0]) < 0.05, n  # measured 27.22 / 34.32 / 69.11 / 212.70 M
    assert len(quantizable_linears(m)) == PUBLISHED[name][1]


def test_random_init_is_seeded():
    a = weights_sha256(build_random("tiny", 1, 128, ARCH))
    assert a == weights_sha256(build_random("tiny", 1, 128, ARCH))
    assert a != weights_sha256(build_random("tiny", 2, 128, ARCH))


def test_load_local_checkpoint_round_trip(tmp_path):
    m = build_random("tiny", 3, 128, ARCH)
    m.save_pretrained(tmp_path / "ckpt")
    lm = load_model("tiny", path=str(tmp_path / "ckpt"), image_size=128)
    assert not lm.random_weights and lm.source == str(tmp_path / "ckpt")
    assert weights_sha256(lm.model) == weights_sha256(m)


def test_offline_without_cache_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable) as e:
        load_model("large", revision="main")
    msg = str(e.value)
    assert "facebook/sam2.1-hiera-large@main" in msg and "--model.path" in msg and "random_init" in msg
    assert "hf download facebook/sam2.1-hiera-" in msg and "\n" not in msg


def test_path_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        load_model("tiny", path=str(tmp_path))


def test_layer_map_names_and_skip():
    m = build_random("tiny", 0, 128, ARCH)
    names = list(quantizable_linears(m))
    assert names[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.proj_in", "blocks.0.mlp.proj_out"]
    assert "blocks.1.proj" in names and len(names) == 5 * 4 + 3
    assert not any(n.endswith("qkv") for n in quantizable_linears(m, ["*.qkv"]))


def test_seeded_random_model_leaves_cuda_generators_alone(monkeypatch):
    """Only the CPU generator is seeded (and restored): torch.manual_seed would also reseed every CUDA generator."""
    def refuse(*a, **k):
        raise AssertionError("CUDA generators were reseeded")
    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    before = torch.random.get_rng_state()
    a = build_random("tiny", 3, 128, ARCH)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_random("tiny", 3, 128, ARCH)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    from sam2ptq_core.algorithms.lowrank import top_r_svd
    R = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_r_svd(R, 4, randomized=True, seed=5)[0], top_r_svd(R, 4, randomized=True, seed=5)[0])
