"""Sanity of the metrics on tiny synthetic image sets: each test can fail if the metric is wrong."""

from __future__ import annotations

import math

import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_ray.metrics import (
    FeatureExtractor,
    InceptionWeightsError,
    LpipsWeightsError,
    assign_clusters,
    build_extractor,
    build_lpips,
    compute_fid_kid,
    correspondence_error,
    fid_from_features,
    generated_images,
    intra_cluster_lpips,
    kid_from_features,
)
from fsg_ray.metrics import features as features_module

SIZE = 32


class BlobG:
    """Diverse fake generator: smooth colour fields from a 4x4x3 grid given by z (plus an offset)."""

    style_dim = 48

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        low = truncation * z.view(-1, 3, 4, 4)
        return torch.tanh(F.interpolate(low, size=SIZE, mode="bicubic", align_corners=False) + self.offset)


class MemorizingG:
    """Fake generator that copies its training images: z picks one, a tiny z-driven brightness jitter."""

    style_dim = 8

    def __init__(self, train: Tensor):
        self.train = train

    def __call__(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        index = z[:, 0].mul(1000).long().remainder(len(self.train))
        return (self.train[index] + 0.01 * torch.tanh(z[:, 1]).view(-1, 1, 1, 1)).clamp(-1, 1)


def blobs(n: int, seed: int) -> Tensor:
    return torch.cat(list(generated_images(BlobG(), n, batch_size=64, seed=seed)))


def stripes(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    freq, phase = 2 + 4 * torch.rand(n, 1, 1, 1, generator=g), 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    color = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    x = torch.linspace(0, 1, SIZE).view(1, 1, 1, SIZE)
    return (torch.sin(2 * math.pi * freq * x + phase) * color).expand(n, 3, SIZE, SIZE).contiguous()


@pytest.fixture(scope="module")
def offline_extractor() -> FeatureExtractor:
    return build_extractor()


@pytest.fixture(scope="module")
def feats(offline_extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    images = {"a1": blobs(96, 1), "a2": blobs(96, 2), "b": stripes(96, 3)}
    return {name: offline_extractor.features(x) for name, x in images.items()}


@pytest.fixture(scope="module")
def lpips_model():
    return build_lpips("vgg")


def test_extractor_is_labelled_offline_when_inception_weights_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(features_module, "CLEANFID_CACHE_DIR", tmp_path)
    extractor = build_extractor()
    assert extractor.offline and extractor.name.startswith("offline:")
    result = compute_fid_kid(BlobG(), blobs(40, 5), n_gen=40, extractor=extractor, batch_size=20, kid_subsets=10)
    assert set(result) == {"fid_offline", "kid_offline", "extractor", "n_gen", "n_real"}
    assert result["extractor"] == extractor.name


def test_inception_extractor_gives_unsuffixed_keys():
    pooled = FeatureExtractor("inception", lambda x: x.mean(dim=(2, 3)).repeat(1, 4), torch.device("cpu"))
    result = compute_fid_kid(BlobG(), blobs(30, 5), n_gen=30, extractor=pooled, batch_size=16, kid_subsets=10)
    assert {"fid", "kid"} <= set(result) and result["extractor"] == "inception"


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_bogus_inception_path_error_names_the_path(tmp_path, kind):
    path = tmp_path / "weights.pt"
    if kind == "garbage":
        path.write_text("not a model")
    with pytest.raises(InceptionWeightsError, match=str(path)):
        build_extractor(inception_path=path)


class _FakeInceptionLayers(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[2] == 299 and x.shape[3] == 299
        return x.mean(dim=(2, 3), keepdim=True).repeat(1, 683, 1, 1)[:, :2048]


class _FakeInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def test_inception_file_is_used_with_clean_resize_to_299(tmp_path):
    torch.jit.script(_FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    extractor = build_extractor(inception_path=tmp_path)
    feats = extractor.features(blobs(3, 0))
    assert extractor.name == "inception" and feats.shape == (3, 2048)
    # Pixels are quantized to uint8 and normalised as (x - 128) / 128 before the network.
    assert np.all(np.abs(feats) <= 1.0)


def test_generated_images_depend_on_seed_not_batch_size():
    a = torch.cat(list(generated_images(BlobG(), 10, batch_size=3, seed=7)))
    b = torch.cat(list(generated_images(BlobG(), 10, batch_size=10, seed=7)))
    c = torch.cat(list(generated_images(BlobG(), 10, batch_size=10, seed=8)))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_fid_same_distribution_far_below_different_distribution(feats):
    same, different = fid_from_features(feats["a1"], feats["a2"]), fid_from_features(feats["a1"], feats["b"])
    assert same < 0.2 * different


def test_kid_near_zero_for_same_distribution_and_positive_otherwise(feats):
    same = kid_from_features(feats["a1"], feats["a2"], num_subsets=20)
    different = kid_from_features(feats["a1"], feats["b"], num_subsets=20)
    assert abs(same) < 0.05 * different and different > 0
    again = [kid_from_features(feats["a1"], feats["b"], num_subsets=20, seed=3) for _ in range(2)]
    assert again[0] == again[1]


def test_lpips_is_labelled_offline_when_backbone_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_lpips("vgg")
    assert model.offline and model.name == "offline:lpips-vgg-random-backbone(seed=0)"
    assert not list(tmp_path.rglob("*.pth"))  # nothing was downloaded


def test_cached_lpips_backbone_is_read_from_torchvision_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_text("corrupt")
    with pytest.raises(LpipsWeightsError, match=str(cached)):
        build_lpips("vgg")


def test_cached_feature_lpips_equals_lpips_forward(lpips_model):
    a, b = blobs(4, 1), stripes(4, 2)
    with torch.no_grad():
        expected = lpips_model.net(a, b).flatten()
    assert torch.allclose(lpips_model.distance(a, b, batch_size=3), expected, atol=1e-5)
    assert isinstance(lpips_model.net, lpips.LPIPS)


def test_assign_clusters_maps_copies_to_their_source(lpips_model):
    train = blobs(3, 11)
    copies = train[[2, 0, 1, 2]] + 0.02 * torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert assign_clusters(copies, train, lpips_model).tolist() == [2, 0, 1, 2]


def test_memorizing_generator_has_near_zero_intra_lpips_below_diverse_generator(lpips_model):
    train = blobs(3, 11)
    copying = intra_cluster_lpips(MemorizingG(train), train, n=24, max_per_cluster=6, lpips_model=lpips_model)
    diverse = intra_cluster_lpips(BlobG(), train, n=24, max_per_cluster=6, lpips_model=lpips_model)
    key = "intra_lpips_offline" if lpips_model.offline else "intra_lpips"
    assert copying[key] < 0.02 and copying[key] < 0.1 * diverse[key]
    assert sum(copying["cluster_sizes"]) == 24 and len(copying["assignment"]) == 24
    assert copying["lpips"] == lpips_model.name
    assert intra_cluster_lpips(BlobG(), train, n=24, max_per_cluster=6, lpips_model=lpips_model) == diverse


def test_correspondence_error_is_zero_for_identity_and_grows_with_perturbation(lpips_model):
    def errors(offset: float) -> dict:
        return correspondence_error(BlobG(), BlobG(offset), lambda x: x, n=8, batch_size=8, lpips_model=lpips_model)

    exact, small, large = errors(0.0), errors(0.1), errors(0.5)
    key = "corr_lpips_offline" if lpips_model.offline else "corr_lpips"
    assert exact["corr_l1"] == 0.0 and exact[key] == pytest.approx(0.0, abs=1e-6)
    assert 0 < small["corr_l1"] < large["corr_l1"] and 0 < small[key] < large[key]
