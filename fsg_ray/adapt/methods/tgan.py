"""TGAN: plain fine-tuning of G and D on the few shots, image-level D, no distance consistency."""

from fsg_ray.adapt.methods.base import Method


class TGAN(Method):
    name = "tgan"
