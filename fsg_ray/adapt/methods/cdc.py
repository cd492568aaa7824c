"""CDC (Ojha et al. 2021): distance consistency on every G step, anchor regions and patch-level D."""

from fsg_ray.adapt.methods.base import Method


class CDC(Method):
    name = "cdc"
    uses_cdc = True
    uses_anchors = True
