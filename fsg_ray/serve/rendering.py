"""Seeds -> images, the way `fsg sample` makes them, and the encodings the API returns. No Ray here.

A seed names one z (`grids.seeded_z`) and, with seeded noise, one set of noise maps drawn from the
same stream after z. Per-seed images are rendered alone (a batch of one) so their bytes never depend
on what else the server is doing; batched forwards sum in another order and may differ from them by
one intensity level in a few pixels.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor, nn

from fsg_ray.grids import image_grid, pair_grid, same_noise_pair, seeded_z, to_pil
from fsg_ray.nets.stylegan2 import NoiseBuffers

NOISE_MODES = ("const", "seeded")
IMAGE_FORMATS = {"png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}
RAW_FORMAT = "raw"
LOSSY_QUALITY = 90


@dataclass(frozen=True)
class Job:
    """One request's images for one forward: all share the model, truncation and noise mode."""

    seeds: tuple[int, ...]
    truncation: float
    noise: str


def seeded_noise(seeds: Sequence[int], sampler: nn.Module) -> list[Tensor]:
    """Per-layer noise maps [B, 1, res, res]; each seed's stream draws its z first, then its maps."""
    shapes = [buffer.shape[1:] for buffer in next(m for m in sampler.modules() if isinstance(m, NoiseBuffers)).as_list()]
    per_seed = []
    for seed in seeds:
        stream = torch.Generator().manual_seed(seed)
        torch.randn(sampler.style_dim, generator=stream)
        per_seed.append([torch.randn(*shape, generator=stream) for shape in shapes])
    return [torch.stack([maps[layer] for maps in per_seed]) for layer in range(len(shapes))]


@torch.no_grad()
def render(sampler: nn.Module, seeds: Sequence[int], truncation: float, noise: str, device: torch.device) -> Tensor:
    """Images [B, 3, H, W] on the CPU, in [-1, 1] nominally (not clamped)."""
    z = seeded_z(list(seeds), sampler.style_dim).to(device)
    maps = "const" if noise == "const" else [m.to(device) for m in seeded_noise(seeds, sampler)]
    return sampler(z, truncation=truncation, noise=maps).cpu()


def render_jobs(sampler: nn.Module, jobs: Sequence[Job], device: torch.device) -> list[Tensor]:
    """One forward per (truncation, noise) group of the jobs; each job gets its own images back."""
    groups: dict[tuple[float, str], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault((job.truncation, job.noise), []).append(index)
    results: list[Tensor] = [torch.empty(0)] * len(jobs)
    for (truncation, noise), members in groups.items():
        images = render(sampler, [s for i in members for s in jobs[i].seeds], truncation, noise, device)
        for i, chunk in zip(members, images.split([len(jobs[i].seeds) for i in members])):
            results[i] = chunk
    return results


def png_bytes(image: Image.Image) -> bytes:
    """Encoded exactly as `grids.save_png` writes a file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: Tensor, fmt: str, size: int | None) -> bytes:
    """One CHW image as png/webp/jpeg bytes, resized to size x size when asked."""
    pil = to_pil(image)
    if size is not None and size != pil.width:
        pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    if fmt == "png":
        return png_bytes(pil)
    buffer = io.BytesIO()
    pil.save(buffer, format=IMAGE_FORMATS[fmt][0], quality=LOSSY_QUALITY)
    return buffer.getvalue()


def raw_array(image: Tensor) -> dict[str, object]:
    """The network's float output, little-endian float32 CHW, base64: np.frombuffer(b64decode(data), '<f4').reshape(shape)."""
    array = image.float().contiguous().numpy().astype("<f4")
    return {"dtype": "float32", "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def grid_png(images: Tensor, columns: int) -> bytes:
    return png_bytes(image_grid(images, columns=columns))


def seed_png(sampler: nn.Module, seed: int, truncation: float, device: torch.device) -> bytes:
    """What `fsg sample --seeds SEED --truncation T` writes, byte for byte."""
    return grid_png(render(sampler, [seed], truncation, "const", device), columns=8)


def pair_png(source: nn.Module, sampler: nn.Module, seed: int, truncation: float, device: torch.device) -> bytes:
    """The source sample above the adapted one for the same z: `fsg sample --pair-with SOURCE --columns 1`."""
    z = seeded_z([seed], sampler.style_dim).to(device)
    images = [side.cpu() for side in same_noise_pair(source, sampler, z, truncation)]
    return png_bytes(pair_grid(*images, columns=1))
