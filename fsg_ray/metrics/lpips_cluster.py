"""Perceptual distances, and intra-cluster LPIPS (SPEC §4): how diverse a few-shot generator stays instead of copying its 10 images.

Two LPIPS models, each named in its result keys. ST-LPIPS (`stlpips-pytorch`, shift-tolerant LPIPS,
Ghildyal & Liu 2022) ships complete weights, backbone included, so it always runs offline: keys
`intra_stlpips`, `corr_stlpips`. Vanilla LPIPS (the `lpips` package's VGG metric, the paper's) ships
only its linear heads; its backbone comes from torchvision's cache
(`$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`) and it is used only when that file is there: keys
`intra_lpips`, `corr_lpips`. The two give different numbers. Nothing here downloads.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import lpips
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

from fsg_ray.metrics.features import Generator, generated_images

_BACKBONE_WEIGHTS = {
    "vgg": VGG16_Weights.IMAGENET1K_V1,
    "alex": AlexNet_Weights.IMAGENET1K_V1,
    "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1,
}
STLPIPS_NETS = ("vgg", "alex")


class LpipsWeightsError(ValueError):
    """The LPIPS backbone weights are not on this machine, or the cached file cannot be loaded."""


def backbone_weights_path(net: str = "vgg") -> Path:
    """Where torchvision keeps the ImageNet weights of the LPIPS backbone `net` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_BACKBONE_WEIGHTS[net].url)


@dataclass(frozen=True)
class LpipsModel:
    """An LPIPS network that can embed images once and compare the cached embeddings many times.

    `key` names its results: "lpips" (vanilla) or "stlpips" (shift-tolerant). Intra-cluster LPIPS needs
    every pair of up to 50 images per cluster; running the model on each pair would embed every image
    ~50 times. `features` + `distance_from_features` split its forward in two (a test checks they
    equal the model's forward). Feature maps of a 256px image take ~32 MB for VGG, so only a
    cluster's worth is held at a time.
    """

    name: str
    key: str
    net: nn.Module
    device: torch.device

    def features(self, images: Tensor, batch_size: int = 32) -> list[Tensor]:
        """Unit-normalised backbone maps per LPIPS layer, each [N, C_l, H_l, W_l]."""
        per_batch = []
        with torch.no_grad():
            for batch in images.split(batch_size):
                maps = self.net.net(self.net.scaling_layer(batch.to(self.device, torch.float32)))
                per_batch.append([lpips.normalize_tensor(m) for m in maps])
        return [torch.cat(layer) for layer in zip(*per_batch)]

    def distance_from_features(self, a: list[Tensor], b: list[Tensor]) -> Tensor:
        """LPIPS per row [N] of two feature lists; a batch of 1 broadcasts against the other."""
        with torch.no_grad():
            return sum(lin((fa - fb) ** 2).mean(dim=(1, 2, 3)) for lin, fa, fb in zip(self.net.lins, a, b))

    def distance(self, a: Tensor, b: Tensor, batch_size: int = 32) -> Tensor:
        """LPIPS between a[i] and b[i] for every i, [N] on the CPU."""
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs images of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        pairs = zip(a.split(batch_size), b.split(batch_size))
        return torch.cat([self.distance_from_features(self.features(x, batch_size), self.features(y, batch_size)).cpu() for x, y in pairs])


def build_stlpips(net: str = "vgg", device: str | torch.device = "cpu") -> LpipsModel:
    """Shift-tolerant LPIPS with the weights shipped in `stlpips-pytorch` (backbone and linear heads)."""
    from stlpips_pytorch import stlpips  # imports IPython and torchsummary; only load them when asked

    if net not in STLPIPS_NETS:
        raise ValueError(f"ST-LPIPS net must be one of {list(STLPIPS_NETS)}, got {net!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # torchvision's deprecated `pretrained=` flag
        module = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False)
    device = torch.device(device)
    return LpipsModel(f"stlpips-{net}", "stlpips", module.to(device).eval(), device)


def lpips_unavailable(net: str = "vgg") -> str | None:
    """Why vanilla LPIPS cannot run on this machine (its backbone weights are not cached), or None."""
    weights = backbone_weights_path(net)
    if weights.is_file():
        return None
    return f"vanilla LPIPS needs the {net} backbone weights at {weights} (torchvision's cache; not shipped in any wheel, never downloaded here)"


def build_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> LpipsModel:
    """Vanilla LPIPS with ImageNet backbone weights from torchvision's cache; LpipsWeightsError when absent or unreadable."""
    if net not in _BACKBONE_WEIGHTS:
        raise ValueError(f"LPIPS net must be one of {sorted(_BACKBONE_WEIGHTS)}, got {net!r}")
    reason = lpips_unavailable(net)
    if reason is not None:
        raise LpipsWeightsError(reason)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # lpips passes the old `pretrained=` flag
        try:
            module = lpips.LPIPS(net=net, verbose=False)
        except Exception as exc:  # any failure here means the cached file is unusable
            raise LpipsWeightsError(f"{backbone_weights_path(net)}: cannot load the {net} backbone of LPIPS: {exc}") from exc
    device = torch.device(device)
    return LpipsModel(f"lpips-{net}", "lpips", module.to(device).eval(), device)


def assign_clusters(images: Tensor, train_images: Tensor, lpips_model: LpipsModel, batch_size: int = 32) -> Tensor:
    """Index [N] (int64) of the training image with the lowest LPIPS distance to each image."""
    train = lpips_model.features(train_images, batch_size)
    nearest = []
    for batch in images.split(batch_size):
        feats = lpips_model.features(batch, batch_size)
        dists = torch.stack([lpips_model.distance_from_features(feats, [t[k : k + 1] for t in train]) for k in range(len(train_images))], 1)
        nearest.append(dists.argmin(dim=1).cpu())
    return torch.cat(nearest)


def pairwise_lpips(images: Tensor, lpips_model: LpipsModel, batch_size: int = 32) -> np.ndarray:
    """The symmetric [N, N] LPIPS matrix of `images` (zero diagonal); each unordered pair computed once."""
    feats = lpips_model.features(images, batch_size)
    matrix = np.zeros((len(images), len(images)))
    for i in range(len(images) - 1):
        row = lpips_model.distance_from_features([f[i : i + 1] for f in feats], [f[i + 1 :] for f in feats]).flatten().cpu().numpy()
        matrix[i, i + 1 :] = matrix[i + 1 :, i] = row
    return matrix


def intra_cluster_lpips(
    G: Generator,
    train_images: Tensor,
    n: int = 1000,
    max_per_cluster: int = 50,
    seed: int = 0,
    batch_size: int = 32,
    truncation: float = 1.0,
    lpips_model: LpipsModel | None = None,
) -> dict:
    """Intra-cluster LPIPS of `n` seeded samples of G around the few-shot set `train_images`.

    Each sample joins the cluster of its LPIPS-nearest training image; from each cluster up to
    `max_per_cluster` members are drawn (torch.Generator seeded with `seed`) and their mean pairwise
    LPIPS taken; the result averages clusters with >= 2 members. A generator that copies its training
    images scores ~0. Samples are kept on the CPU (n * 3 * H * W floats).

    `lpips_model` defaults to ST-LPIPS (VGG). Returns {"intra_" + model key (intra_stlpips or
    intra_lpips): float, "lpips": model name, "n": n,
    "cluster_sizes": [len per training image], "per_cluster": [mean LPIPS or None if < 2 members],
    "assignment": [training-image index of each sample], "pairwise": [the [m, m] LPIPS matrix of each
    scored cluster's m drawn members (for intervals)]}.
    """
    if lpips_model is None:
        lpips_model = build_stlpips()
    images = torch.cat([batch.cpu() for batch in generated_images(G, n, batch_size, seed, truncation)])
    assignment = assign_clusters(images, train_images, lpips_model, batch_size)
    rng = torch.Generator().manual_seed(seed)
    per_cluster: list[float | None] = []
    pairwise: list[np.ndarray] = []
    for k in range(len(train_images)):
        members = (assignment == k).nonzero().flatten()
        if len(members) > max_per_cluster:
            members = members[torch.randperm(len(members), generator=rng)[:max_per_cluster]]
        if len(members) < 2:
            per_cluster.append(None)
            continue
        pairwise.append(pairwise_lpips(images[members], lpips_model, batch_size))
        per_cluster.append(float(pairwise[-1].sum() / (len(members) * (len(members) - 1))))
    scored = [v for v in per_cluster if v is not None]
    if not scored:
        raise ValueError(f"no cluster has 2 or more of the {n} samples; raise n (training images: {len(train_images)})")
    return {
        f"intra_{lpips_model.key}": sum(scored) / len(scored),
        "lpips": lpips_model.name,
        "n": n,
        "cluster_sizes": torch.bincount(assignment, minlength=len(train_images)).tolist(),
        "per_cluster": per_cluster,
        "assignment": assignment.tolist(),
        "pairwise": pairwise,
    }
