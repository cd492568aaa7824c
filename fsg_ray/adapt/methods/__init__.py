"""The registry of adaptation methods: `--method NAME` picks one; adding a method is one small file."""

from fsg_ray.adapt.methods.ada import ADA
from fsg_ray.adapt.methods.adam import AdAM
from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.adapt.methods.bsa import BSA
from fsg_ray.adapt.methods.cdc import CDC
from fsg_ray.adapt.methods.ewc import EWC
from fsg_ray.adapt.methods.freezed import FreezeD
from fsg_ray.adapt.methods.minegan import MineGAN
from fsg_ray.adapt.methods.rick import RICK
from fsg_ray.adapt.methods.tgan import TGAN
from fsg_ray.config import AdaptConfig, ConfigError

METHODS: dict[str, type[Method]] = {m.name: m for m in (CDC, TGAN, FreezeD, EWC, ADA, BSA, MineGAN, AdAM, RICK)}


def make_method(config: AdaptConfig) -> Method:
    if config.method not in METHODS:
        raise ConfigError(f"method: unknown {config.method!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[config.method](config)


__all__ = ["METHODS", "Method", "Networks", "make_method"]
