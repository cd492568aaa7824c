"""The StyleGAN2 networks: the field's state-dict format, determinism, gradients, patch-level maps."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fsg_ray.nets.checkpoints import infer_discriminator_config, infer_generator_config
from fsg_ray.nets.ops import make_kernel, upfirdn2d
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig, PatchHeads, patch_logits

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ModelConfig(size=32, style_dim=16, n_mlp=2, channel_max=8)


def shapes(module: torch.nn.Module) -> list[list]:
    return sorted([k, list(v.shape)] for k, v in module.state_dict().items())


def on_meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def test_generator_state_dict_matches_published_256_cm2_format():
    expected = json.loads((FIXTURES / "stylegan2_256_cm2_g_keys.json").read_text())
    assert shapes(on_meta(Generator, ModelConfig(size=256, channel_multiplier=2))) == expected


def test_discriminator_state_dict_matches_published_256_cm2_format():
    expected = json.loads((FIXTURES / "stylegan2_256_cm2_d_keys.json").read_text())
    assert shapes(on_meta(Discriminator, ModelConfig(size=256, channel_multiplier=2))) == expected


@pytest.mark.parametrize("size", [32, 64, 128, 256, 512, 1024])
@pytest.mark.parametrize("cm", [1, 2])
def test_architecture_is_recovered_from_state_dict_shapes(size, cm):
    config = ModelConfig(size=size, channel_multiplier=cm)
    g_state = on_meta(Generator, config).state_dict()
    d_state = on_meta(Discriminator, config).state_dict()
    # At 32px the multiplier changes no layer, so compare what a checkpoint can show: the layers.
    for inferred in (infer_generator_config(g_state), infer_discriminator_config(d_state)):
        assert inferred.size == size
        assert [inferred.channels(2**k) for k in range(2, inferred.log_size + 1)] == [
            config.channels(2**k) for k in range(2, config.log_size + 1)
        ]
    assert shapes(on_meta(Generator, infer_generator_config(g_state))) == shapes(on_meta(Generator, config))


def test_channel_cap_limits_every_layer_and_is_recovered():
    config = ModelConfig(size=64, style_dim=32, n_mlp=3, channel_multiplier=2, channel_max=24)
    g = on_meta(Generator, config)
    assert max(v.shape[1] for k, v in g.state_dict().items() if k.endswith("conv.weight") and v.ndim == 5) == 24
    assert infer_generator_config(g.state_dict()) == config


def test_default_channels_reproduce_the_published_table():
    config = ModelConfig(size=1024, channel_multiplier=2)
    assert [config.channels(2**k) for k in range(2, 11)] == [512, 512, 512, 512, 512, 256, 128, 64, 32]


def test_const_noise_gives_identical_images_for_the_same_z():
    torch.manual_seed(0)
    g = Generator(TINY)
    z = torch.randn(3, TINY.style_dim)
    assert torch.equal(g(z, noise="const"), g(z, noise="const"))


def test_random_noise_changes_the_image():
    torch.manual_seed(0)
    g = Generator(TINY)
    for module in g.modules():
        if module.__class__.__name__ == "NoiseInjection":
            module.weight.data.fill_(0.5)
    z = torch.randn(2, TINY.style_dim)
    assert not torch.allclose(g(z, noise="random"), g(z, noise="random"))


def test_truncation_zero_collapses_every_z_to_the_mean_image():
    torch.manual_seed(0)
    g = Generator(TINY)
    images = g(torch.randn(4, TINY.style_dim), truncation=0.0)
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-5)


def test_style_mixing_switches_to_the_second_code_at_the_inject_index():
    torch.manual_seed(0)
    g = Generator(TINY)
    z1, z2 = torch.randn(2, 1, TINY.style_dim)
    latents = g.latents([z1, z2], inject_index=3)
    assert torch.equal(latents[:, :3], g.mapping(z1).unsqueeze(1).expand(-1, 3, -1))
    assert torch.equal(latents[:, 3:], g.mapping(z2).unsqueeze(1).expand(-1, TINY.n_latent - 3, -1))


def test_synthesis_returns_one_feature_map_per_modulated_conv():
    torch.manual_seed(0)
    g = Generator(ModelConfig(size=64, style_dim=16, n_mlp=2, channel_max=8))
    out = g.synthesis(g.latents(torch.randn(2, 16)))
    assert [f.shape[-1] for f in out.features] == [4, 8, 8, 16, 16, 32, 32, 64, 64]
    assert out.image.shape == (2, 3, 64, 64)


def test_gradients_reach_every_generator_parameter():
    torch.manual_seed(0)
    g = Generator(TINY)
    for module in g.modules():
        if module.__class__.__name__ == "NoiseInjection":
            module.weight.data.fill_(0.1)
    g([torch.randn(4, 16), torch.randn(4, 16)], inject_index=2).square().mean().backward()
    missing = [name for name, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_gradients_reach_every_discriminator_and_head_parameter():
    torch.manual_seed(0)
    config = ModelConfig(size=64, style_dim=16, n_mlp=2, channel_max=8)
    d = Discriminator(config)
    heads = PatchHeads(d.patch_map_channels())
    image = torch.randn(4, 3, 64, 64)
    loss = d(image).sum() + sum(patch_logits(d, heads, image, level).sum() for level in range(len(heads.heads)))
    loss.backward()
    params = list(d.named_parameters()) + [(f"heads.{n}", p) for n, p in heads.named_parameters()]
    assert [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_patch_maps_of_256px_are_the_four_residual_branches_at_32_and_16():
    d = on_meta(Discriminator, ModelConfig(size=256, channel_multiplier=2))
    assert [where for _, where in d._patch_map_sources()] == [(3, "conv2"), (4, "conv1"), (4, "conv2"), (5, "conv1")]
    assert d.patch_map_channels() == [512, 512, 512, 512]


def test_patch_features_have_the_spec_sizes():
    d = Discriminator(ModelConfig(size=256, channel_max=4))
    maps = d.patch_features(torch.randn(2, 3, 256, 256))
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 32, 32), (4, 32, 32), (4, 16, 16), (4, 16, 16)]


def test_patch_logits_are_one_channel_maps():
    d = Discriminator(ModelConfig(size=64, channel_max=8))
    heads = PatchHeads(d.patch_map_channels())
    assert [patch_logits(d, heads, torch.randn(2, 3, 64, 64), lvl).shape for lvl in range(4)] == [
        (2, 1, 32, 32),
        (2, 1, 32, 32),
        (2, 1, 16, 16),
        (2, 1, 16, 16),
    ]


def test_discriminator_rejects_a_batch_the_stddev_group_cannot_split():
    d = Discriminator(TINY)
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        d(torch.randn(6, 3, 32, 32))


def naive_upfirdn(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Textbook definition, one output pixel at a time: correlation with the flipped kernel."""
    h, w = x.shape
    big = np.zeros((h * up, w * up))
    big[::up, ::up] = x
    p0, p1 = pad
    padded = np.zeros((h * up + p0 + p1, w * up + p0 + p1))
    padded[p0 : p0 + h * up, p0 : p0 + w * up] = big
    kf = k[::-1, ::-1]
    kh = k.shape[0]
    out_h = padded.shape[0] - kh + 1
    full = np.array([[np.sum(padded[i : i + kh, j : j + kh] * kf) for j in range(out_h)] for i in range(out_h)])
    return full[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (1, 2, (2, 2))])
def test_upfirdn2d_matches_the_textbook_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 6))
    k = np.outer([1.0, 2.0, 3.0, 1.0], [1.0, 2.0, 3.0, 1.0])
    got = upfirdn2d(torch.tensor(x)[None, None], torch.tensor(k), up=up, down=down, pad=pad)[0, 0].numpy()
    np.testing.assert_allclose(got, naive_upfirdn(x, k, up, down, pad), atol=1e-10)


def test_upfirdn2d_negative_padding_crops():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    out = upfirdn2d(x, torch.ones(1, 1), pad=(-1, -2))
    assert torch.equal(out, x[:, :, 1:4, 1:4])


def test_blur_kernel_is_normalised():
    assert make_kernel([1, 3, 3, 1]).sum().item() == pytest.approx(1.0)
