"""Image grids as PNG: samples, and source <-> target pairs for the same z (the correspondence view)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from fsg_ray import storage


def stored_noise(G: torch.nn.Module) -> list[Tensor] | str:
    """The per-layer noise maps G keeps (`G.noises`), to be fed to every generator compared with G.

    A generator without stored maps (no noise inputs) gets "const", which it ignores.
    """
    noises = getattr(G, "noises", None)
    return noises.as_list() if noises is not None else "const"


@torch.no_grad()
def same_noise_pair(G_s: torch.nn.Module, G_t: torch.nn.Module, z: Tensor, truncation: float = 1.0) -> tuple[Tensor, Tensor]:
    """G_s(z) and G_t(z), clamped to [-1, 1], both through the source's stored noise maps.

    Each generator's own buffers need not match: a checkpoint trained with rosinality's code holds
    different noise in `g` (which G_t starts from) and `g_ema`, so comparing them with their own
    noise would show differences that no adaptation made.
    """
    noise: Sequence[Tensor] | str = stored_noise(G_s)
    source = G_s(z, truncation=truncation, noise=noise).clamp(-1, 1)
    return source, G_t(z, truncation=truncation, noise=noise).clamp(-1, 1)


def to_pil(grid: Tensor) -> Image.Image:
    """[-1, 1] CHW tensor -> 8-bit RGB image."""
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def image_grid(images: Tensor, columns: int = 8) -> Image.Image:
    return to_pil(make_grid(images, nrow=columns, padding=2, pad_value=1.0))


def pair_grid(source: Tensor, target: Tensor, columns: int = 8) -> Image.Image:
    """Rows alternate source and target, so each target sits under its source for the same z."""
    rows = []
    for start in range(0, source.shape[0], columns):
        rows += [source[start : start + columns], target[start : start + columns]]
    return to_pil(make_grid(torch.cat(rows), nrow=columns, padding=2, pad_value=1.0))


def save_png(uri: str, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


def parse_seeds(text: str) -> list[int]:
    """'0-24' or '1,5,9' or '0-3,10' -> seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            seeds += list(range(int(first), int(last) + 1)) if sep else [int(first)]
        except ValueError:
            raise ValueError(f"seeds: cannot parse {part!r} in {text!r}; use e.g. 0-24 or 1,5,9") from None
    return seeds


def seeded_z(seeds: list[int], style_dim: int) -> Tensor:
    """One z per seed, each from its own generator, so a seed names the same image everywhere."""
    return torch.stack([torch.randn(style_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
