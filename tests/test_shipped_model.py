"""The toy source generator shipped in the package: loads offline by name and samples toy faces."""

import torch

from fsg_ray import load_discriminator, load_generator
from fsg_ray.data.toy import held_out
from fsg_ray.nets.checkpoints import SHIPPED_MODELS, read_checkpoint


def test_shipped_model_is_a_small_field_format_file():
    path = SHIPPED_MODELS["toy:faces"]
    assert path.stat().st_size < 8 * 2**20
    assert sorted(torch.load(path, weights_only=True)) == ["d", "g", "g_ema"]


def test_toy_faces_loads_by_name_with_its_architecture():
    ckpt = read_checkpoint("toy:faces")
    assert (ckpt["model"]["size"], ckpt["model"]["style_dim"], ckpt["model"]["n_mlp"], ckpt["model"]["channel_max"]) == (64, 64, 4, 32)
    assert load_discriminator("toy:faces")(torch.zeros(4, 3, 64, 64)).shape == (4, 1)


def test_samples_are_varied_images_with_the_colour_statistics_of_toy_faces():
    g = load_generator("toy:faces")
    with torch.no_grad():
        images = g(torch.randn(64, g.style_dim, generator=torch.Generator().manual_seed(0)), noise="const")
    faces = held_out("faces", 64, size=64)
    assert images.shape == (64, 3, 64, 64)
    assert (images.abs() > 1.1).float().mean() < 0.01  # in range; an untrained network's outputs span about +-10
    # Diverse (not collapsed) and near the data's per-channel mean colour; a random network fails both.
    assert images.std(dim=0).mean() > 0.5 * faces.std(dim=0).mean()
    assert (images.mean(dim=(0, 2, 3)) - faces.mean(dim=(0, 2, 3))).abs().max() < 0.15
