"""The toy source generator shipped in the package: loads offline by name and samples toy faces."""

import json
import shlex

import torch

from fsg_ray import load_discriminator, load_generator
from fsg_ray.data.toy import held_out
from fsg_ray.metrics.features import build_extractor, generated_images
from fsg_ray.metrics.fid import kid_from_features
from fsg_ray.nets.checkpoints import SHIPPED_MODELS, read_checkpoint


def test_shipped_model_is_a_small_field_format_file():
    path = SHIPPED_MODELS["toy:faces"]
    assert path.stat().st_size < 8 * 2**20
    assert sorted(torch.load(path, weights_only=True)) == ["d", "g", "g_ema"]


def test_toy_faces_loads_by_name_with_its_architecture():
    ckpt = read_checkpoint("toy:faces")
    assert (ckpt["model"]["size"], ckpt["model"]["style_dim"], ckpt["model"]["n_mlp"], ckpt["model"]["channel_max"]) == (64, 128, 4, 32)
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


def test_its_card_names_the_command_that_made_it_and_that_command_names_its_architecture():
    card = json.loads(SHIPPED_MODELS["toy:faces"].with_suffix(".json").read_text())
    flags = dict(zip(*[iter(shlex.split(card["command"])[2:])] * 2))
    assert card["command"].startswith("fsg pretrain --domain toy:faces ") and card["step"] == int(flags["--steps"])
    model = read_checkpoint("toy:faces")["model"]
    assert [int(flags[f]) for f in ("--size", "--style-dim", "--n-mlp", "--channel-max")] == [model[k] for k in ("size", "style_dim", "n_mlp", "channel_max")]


def test_its_samples_are_near_held_out_toy_faces_where_the_first_shipped_model_was_not():
    # Inception KID of 64 samples against 64 held-out faces; measured 2026-12-05 (seeded, so the same on any
    # CPU up to float error): 0.110 for this model, 0.264 for the model shipped before it.
    g = load_generator("toy:faces")
    extractor = build_extractor()
    kid = kid_from_features(extractor.features(generated_images(g, 64, seed=0)), extractor.features(held_out("faces", 64, size=64)))
    assert kid < 0.15
