"""Source pretraining: a StyleGAN2 trained from scratch with the standard objective (the toy source model).

It is the adaptation loop with plain fine-tuning semantics (non-saturating loss, lazy R1, path
length, style mixing, EMA) started from random weights on many images instead of a source model.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from fsg_ray.adapt.loop import Adaptation, new_adaptation
from fsg_ray.adapt.run import DirectorySink, RunSpec, train_until_done
from fsg_ray.config import AdaptConfig
from fsg_ray.data.images import FewShotImages
from fsg_ray.data.toy import held_out
from fsg_ray.nets.checkpoints import FORMAT, export_checkpoint
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig

PRETRAIN_SEED = 2  # disjoint from the few-shot sets (seed 0) and the held-out evaluation sets (seed 1)


def random_source(model: ModelConfig, seed: int) -> dict[str, Any]:
    """A freshly initialised G/D pair in checkpoint form, seeded."""
    torch.manual_seed(seed)
    g, d = Generator(model), Discriminator(model)
    return {"format": FORMAT, "model": asdict(model), "uri": f"random-init(seed={seed})", "g": g.state_dict(), "g_ema": g.state_dict(), "d": d.state_dict()}


def pretrain(model: ModelConfig, domain: str, n_images: int, config: AdaptConfig, run_uri: str, export_to: str | None, progress: bool = True) -> Adaptation:
    """Train on `n_images` of a toy domain; resumes from `run_uri`; optionally exports the field format."""
    if config.method != "tgan":
        raise ValueError(f"method: pretraining uses the standard objective ('tgan' hooks), got {config.method!r}")
    name = domain.removeprefix("toy:")
    images = FewShotImages(held_out(name, n_images, size=model.size, seed=PRETRAIN_SEED))
    run = new_adaptation(random_source(model, config.seed), images, config)
    sink = DirectorySink(run_uri, keep=config.keep_checkpoints)
    latest = sink.latest_checkpoint()
    if latest is not None:
        run.restore(latest)
    spec = RunSpec(source=f"random-init(seed={config.seed})", target=f"toy:{name} x{n_images}", config=config)
    train_until_done(run, spec, sink, progress)
    if export_to is not None:
        export_checkpoint(run_uri, export_to)
    return run
