"""fsg-ray: few-shot image generation by cross-domain correspondence, distributed on Ray."""

from fsg_ray.nets.checkpoints import load_discriminator, load_generator
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig

__all__ = ["Discriminator", "Generator", "ModelConfig", "load_discriminator", "load_generator"]
