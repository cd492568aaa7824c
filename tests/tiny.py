"""Tiny models and targets shared by the tests: small enough that a training step takes milliseconds."""

from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from fsg_ray.adapt.methods.minegan import Miner
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets.checkpoints import FORMAT, write_checkpoint
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig

TINY = ModelConfig(size=32, style_dim=16, n_mlp=2, channel_max=8)


def tiny_source(seed: int = 0, model: ModelConfig = TINY) -> dict:
    """A randomly initialised G/D pair in fsg-ray checkpoint form (what `read_checkpoint` returns)."""
    torch.manual_seed(seed)
    g, d = Generator(model), Discriminator(model)
    return {"format": FORMAT, "model": asdict(model), "uri": "tiny", "g": g.state_dict(), "g_ema": g.state_dict(), "d": d.state_dict()}


def tiny_targets(n: int = 10, size: int = 32) -> FewShotImages:
    return FewShotImages(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1)


def write_tiny_source(path: Path, seed: int = 0) -> str:
    """The tiny source as a file in the field's format (`g`, `g_ema`, `d`), as a released model ships."""
    source = tiny_source(seed)
    write_checkpoint(str(path), {k: source[k] for k in ("g", "g_ema", "d")})
    return str(path)


def write_minegan_run(path: Path) -> Miner:
    """A MineGAN checkpoint of the tiny source whose miner is trained (no longer the identity); returns the miner."""
    miner = Miner(TINY.style_dim)
    torch.nn.init.normal_(miner.out.weight)
    ckpt = {**tiny_source(), "method": "minegan", "method_state": {"miner": miner.state_dict()}}
    ckpt.pop("uri")
    write_checkpoint(str(path), ckpt)
    return miner.eval()


def write_target_folder(folder: Path, n: int = 10, size: int = 32) -> str:
    """`n` random RGB PNGs in a folder, the way a user hands in their few shots."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(3)
    for i in range(n):
        pixels = (torch.rand(size, size, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"shot_{i:02d}.png")
    return str(folder)
