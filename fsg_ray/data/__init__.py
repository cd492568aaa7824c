"""Target images: the user's own (folder, zip, Parquet) and the built-in procedural toy domains."""

from fsg_ray.data.images import (
    FewShotImages,
    TargetDataError,
    load_eval_set,
    load_images,
    load_target,
    warn_if_few,
)
from fsg_ray.data.toy import TOY_DOMAINS, few_shot_set, held_out, image_transform, toy_images

__all__ = [
    "TOY_DOMAINS",
    "FewShotImages",
    "TargetDataError",
    "few_shot_set",
    "held_out",
    "image_transform",
    "load_eval_set",
    "load_images",
    "load_target",
    "toy_images",
    "warn_if_few",
]
