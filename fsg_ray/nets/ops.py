"""StyleGAN2's two special ops, FIR resampling and bias + leaky-ReLU, in plain PyTorch.

These are the reference definitions: they run on CPU and GPU alike and never need a compiler.
`fused_ops.py` may swap in compiled CUDA kernels where they build and are faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def bias_leaky_relu(x: Tensor, bias: Tensor, slope: float = LEAKY_SLOPE, gain: float = ACTIVATION_GAIN) -> Tensor:
    """Add a per-channel bias (channel dim 1), leaky-ReLU, then scale so the output variance is kept."""
    shape = (1, bias.shape[0]) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope=slope) * gain


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, filter with `kernel`, then keep every `down`-th pixel.

    Same padding convention as the StyleGAN2 papers' op: `pad = (before, after)` applied to both
    axes of the zero-inserted image; negative padding crops.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(batch, channels, height * up, width * up)
    before, after = pad
    x = F.pad(x, (max(before, 0), max(after, 0), max(before, 0), max(after, 0)))
    if before < 0 or after < 0:
        h, w = x.shape[2:]
        x = x[:, :, max(-before, 0) : h - max(-after, 0), max(-before, 0) : w - max(-after, 0)]
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)
