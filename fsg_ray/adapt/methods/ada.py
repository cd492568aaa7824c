"""TGAN + ADA (Karras et al. 2020): plain fine-tuning with adaptive augmentation of everything D sees
always on (fsg_ray/adapt/augment.py; other methods turn it on with `augment.enabled`)."""

from fsg_ray.adapt.methods.base import Method


class ADA(Method):
    name = "ada"
    augments = True
