"""The built-in procedural domains: determinism, resolution, correspondence, factors of variation."""

import dataclasses

import numpy as np
import pytest
import torch

from fsg_ray.data.toy import (
    FACTOR_RANGES,
    TOY_DOMAINS,
    few_shot_set,
    held_out,
    image_transform,
    render_faces,
    sample_face_params,
    toy_images,
)


@pytest.mark.parametrize("name", TOY_DOMAINS)
def test_rendering_is_deterministic_by_seed(name):
    assert torch.equal(toy_images(name, 4, 32, seed=5), toy_images(name, 4, 32, seed=5))


@pytest.mark.parametrize("name", TOY_DOMAINS)
def test_distinct_seeds_give_distinct_images(name):
    assert (toy_images(name, 4, 32, seed=5) - toy_images(name, 4, 32, seed=6)).abs().mean() > 0.01


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("name", TOY_DOMAINS)
def test_every_domain_renders_at_size_in_range(name, size):
    images = toy_images(name, 2, size)
    assert images.shape == (2, 3, size, size) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1


def test_sets_are_prefix_stable():
    assert torch.equal(toy_images("faces", 3, 32, seed=2), toy_images("faces", 70, 32, seed=2)[:3])


@pytest.mark.parametrize("name", ["tint", "sketch", "painting", "negative"])
def test_image_space_domain_is_its_transform_of_the_faces(name):
    faces = toy_images("faces", 3, 64, seed=4)
    assert torch.equal(image_transform(name)(faces), toy_images(name, 3, 64, seed=4))


def test_sketch_is_grey_and_mostly_white():
    sketch = toy_images("sketch", 4, 64)
    assert torch.equal(sketch[:, 0], sketch[:, 1]) and torch.equal(sketch[:, 1], sketch[:, 2])
    assert sketch.mean() > 0.5


@pytest.mark.parametrize("name", ["faces", "sunglasses", "babies"])
def test_parameter_space_domains_have_no_image_transform(name):
    assert image_transform(name) is None


def test_unknown_domain_lists_valid_names():
    with pytest.raises(ValueError, match="faces, tint, sketch, painting, negative, sunglasses, babies"):
        toy_images("cats", 1)
    with pytest.raises(ValueError, match="valid names"):
        image_transform("cats")


def test_few_shot_set_is_ten_fixed_images():
    shots = few_shot_set("faces", 32)
    assert shots.shape == (10, 3, 32, 32) and torch.equal(shots, few_shot_set("faces", 32))


@pytest.mark.parametrize("name", TOY_DOMAINS)
def test_held_out_never_repeats_a_few_shot_image(name):
    shots = few_shot_set(name, 32).flatten(1)
    evaluation = held_out(name, 200, 32).flatten(1)
    assert torch.cdist(evaluation, shots).min() > 1.0


def test_held_out_refuses_the_few_shot_seed():
    with pytest.raises(ValueError, match="few-shot seed"):
        held_out("faces", 5, seed=0)


def test_sunglasses_and_babies_keep_the_identity_but_change_the_face():
    faces, glasses, babies = (toy_images(n, 4, 64, seed=9) for n in ("faces", "sunglasses", "babies"))
    corner = (slice(None), slice(None), slice(0, 6), slice(0, 6))  # background: same in every domain
    assert torch.equal(faces[corner], glasses[corner]) and torch.equal(faces[corner], babies[corner])
    assert (faces - glasses).abs().mean() > 0.01 and (faces - babies).abs().mean() > 0.01


@pytest.mark.parametrize("factor", sorted(FACTOR_RANGES))
def test_each_factor_of_variation_changes_the_image(factor):
    low, high = FACTOR_RANGES[factor]
    face = sample_face_params(1, seed=0)
    values = (low, (low + high) / 2)  # not low vs high: hues are circular
    variants = [dataclasses.replace(face, **{factor: np.array([v], np.float32)}) for v in values]
    images = [render_faces(v, 64) for v in variants]
    assert (images[0] - images[1]).abs().mean() > 1e-3


def test_faces_have_at_least_six_factors_of_variation():
    assert len(FACTOR_RANGES) >= 6

