"""StyleGAN2 (config F) generator and discriminator, with the state-dict names of the field's checkpoints.

Module and parameter names follow the de-facto checkpoint format (rosinality/stylegan2-pytorch), so a
released `.pt` loads strictly. The blocks are named after the paper's concepts and read top to bottom.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_ray.nets.ops import bias_leaky_relu, make_kernel, upfirdn2d

BLUR_TAPS = (1, 3, 3, 1)
SUPPORTED_SIZES = tuple(2**k for k in range(5, 11))
PATCH_MAP_SIZES = (32, 16)
MAX_PATCH_MAPS = 4


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a StyleGAN2 pair; `channel_max` is fsg-ray's opt-in cap for tiny models."""

    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_max: int | None = None
    lr_mlp: float = 0.01

    def __post_init__(self) -> None:
        if self.size not in SUPPORTED_SIZES:
            raise ValueError(f"size: expected one of {SUPPORTED_SIZES}, got {self.size}")
        if self.channel_max is not None and self.channel_max < 1:
            raise ValueError(f"channel_max: expected a positive integer, got {self.channel_max}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        """Number of modulated 3x3 convs (and noise buffers) in the generator."""
        return 2 * self.log_size - 3

    def channels(self, resolution: int) -> int:
        cm = self.channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
        c = table[resolution]
        return c if self.channel_max is None else min(c, self.channel_max)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky-ReLU + gain; holds the layer's bias (key `...activate.bias` / `....1.bias`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return bias_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored at unit scale, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return bias_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class Blur(nn.Module):
    """FIR low-pass filter; `gain` compensates the energy lost by zero-insertion upsampling."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_TAPS) * gain)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_TAPS) * factor**2)
        p = len(BLUR_TAPS) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Conv whose weights are scaled per sample by the style, then demodulated to unit variance."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(BLUR_TAPS) - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor**2)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        s = self.modulation(style).view(batch, 1, self.in_ch, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8).view(batch, self.out_ch, 1, 1, 1)
        x = x.reshape(1, batch * self.in_ch, height, width)
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * self.in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_ch, *out.shape[2:])
            return self.blur(out)
        out = F.conv2d(x, weight.view(batch * self.out_ch, self.in_ch, k, k), padding=k // 2, groups=batch)
        return out.view(batch, self.out_ch, *out.shape[2:])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        # In x's dtype: under autocast the fp32 weight would otherwise promote bf16/fp16 activations.
        return x + (self.weight * noise).to(x.dtype)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB, added to the upsampled RGB of the previous resolution (skip net)."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class NoiseBuffers(nn.Module):
    """The stored per-layer noise maps (`noises.noise_i`): fixed noise makes G_s and G_t comparable."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        for i in range(config.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

    def as_list(self) -> list[Tensor]:
        return list(self.buffers())


@dataclass
class Synthesis:
    """What one generator forward produces: the image and, for the CDC loss, every conv's output."""

    image: Tensor
    features: list[Tensor]
    latents: Tensor


class Generator(nn.Module):
    """Mapping network -> constant input -> styled convs per resolution -> skip-connected ToRGBs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.style_dim = config.style_dim
        self.n_latent = config.n_latent
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activate=True) for _ in range(config.n_mlp)]
        self.style = nn.Sequential(*layers)

        c4 = config.channels(4)
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, config.style_dim)
        self.to_rgb1 = ToRGB(c4, config.style_dim, upsample=False)
        self.noises = NoiseBuffers(config)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c4
        for log_res in range(3, config.log_size + 1):
            out_ch = config.channels(2**log_res)
            self.convs.append(StyledConv(in_ch, out_ch, config.style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, config.style_dim))
            self.to_rgbs.append(ToRGB(out_ch, config.style_dim))
            in_ch = out_ch
        self.register_buffer("mean_w", torch.zeros(0), persistent=False)

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> Tensor:
        """Mean W of `n` seeded samples, cached: the centre that truncation pulls towards."""
        if self.mean_w.numel() == 0:
            z = torch.randn(n, self.style_dim, generator=torch.Generator().manual_seed(seed)).to(self.input.input.device)
            self.mean_w = self.mapping(z).mean(dim=0, keepdim=True)
        return self.mean_w

    def latents(self, z: Tensor | Sequence[Tensor], truncation: float = 1.0, inject_index: int | None = None, input_is_w: bool = False) -> Tensor:
        """Per-layer W+ codes [B, n_latent, style_dim]; two z give style mixing at `inject_index`."""
        zs = [z] if isinstance(z, Tensor) else list(z)
        if not 1 <= len(zs) <= 2:
            raise ValueError(f"z: expected a tensor or a list of two tensors (style mixing), got {len(zs)} tensors")
        ws = zs if input_is_w else [self.mapping(x) for x in zs]
        if truncation != 1.0:
            w_avg = self.mean_latent()
            ws = [w_avg + truncation * (w - w_avg) for w in ws]
        if len(ws) == 1:
            return ws[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        first = ws[0].unsqueeze(1).repeat(1, inject_index, 1)
        second = ws[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
        return torch.cat([first, second], dim=1)

    def synthesis(self, latents: Tensor, noise: str | Sequence[Tensor] = "const") -> Synthesis:
        """Render W+ codes; `noise` is "const" (stored buffers), "random", or one map per layer."""
        noise_maps = self._noise_maps(noise)
        features = []
        out = self.conv1(self.input(latents.shape[0]), latents[:, 0], noise_maps[0])
        features.append(out)
        skip = self.to_rgb1(out, latents[:, 1])
        i = 1
        for up_conv, conv, to_rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            out = up_conv(out, latents[:, i], noise_maps[i])
            features.append(out)
            out = conv(out, latents[:, i + 1], noise_maps[i + 1])
            features.append(out)
            skip = to_rgb(out, latents[:, i + 2], skip)
            i += 2
        return Synthesis(image=skip, features=features, latents=latents)

    def _noise_maps(self, noise: str | Sequence[Tensor]) -> list[Tensor | None]:
        if noise == "const":
            return self.noises.as_list()
        if noise == "random":
            return [None] * self.config.num_layers
        if isinstance(noise, str):
            raise ValueError(f"noise: expected 'const', 'random' or a list of tensors, got {noise!r}")
        if len(noise) != self.config.num_layers:
            raise ValueError(f"noise: expected {self.config.num_layers} maps, got {len(noise)}")
        return list(noise)

    def forward(self, z: Tensor | Sequence[Tensor], truncation: float = 1.0, noise: str | Sequence[Tensor] = "const", inject_index: int | None = None) -> Tensor:
        """Images in [-1, 1] (nominally; the network does not clamp) for z [B, style_dim]."""
        return self.synthesis(self.latents(z, truncation, inject_index), noise).image


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [bias + leaky-ReLU]; a Sequential so keys read `...0.weight`, `...1.bias`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False, activate: bool = True, bias: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(BLUR_TAPS) - factor) + (kernel_size - 1)
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """FromRGB -> residual blocks down to 4x4 -> minibatch stddev -> conv -> two linears -> one logit."""

    def __init__(self, config: ModelConfig, stddev_group: int = 4):
        super().__init__()
        self.config = config
        self.stddev_group = stddev_group
        in_ch = config.channels(config.size)
        blocks: list[nn.Module] = [ConvLayer(3, in_ch, 1)]
        for log_res in range(config.log_size, 2, -1):
            out_ch = config.channels(2 ** (log_res - 1))
            blocks.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs = nn.Sequential(*blocks)
        c4 = config.channels(4)
        self.final_conv = ConvLayer(in_ch + 1, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 4 * 4, c4, activate=True), EqualLinear(c4, 1))

    def forward(self, image: Tensor) -> Tensor:
        """Image-level realism logits [B, 1]."""
        out = self.convs(image)
        out = torch.cat([out, self._minibatch_stddev(out)], dim=1)
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))

    def _minibatch_stddev(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        group = min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(f"batch: the minibatch-stddev layer needs a batch divisible by {group}, got {batch}")
        y = x.view(group, -1, 1, channels, height, width)
        y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)
        y = y.mean(dim=(2, 3, 4), keepdim=True).squeeze(2)
        return y.repeat(group, 1, height, width)

    def patch_map_channels(self) -> list[int]:
        """Channels of the maps `patch_features` returns (what the extra heads take)."""
        return [c for c, _ in self._patch_map_sources()]

    def _patch_map_sources(self) -> list[tuple[int, tuple[int, str]]]:
        """(channels, (block index, 'conv1'|'conv2')) of the first residual-branch maps at 32 or 16 px."""
        found = []
        res = self.config.size
        for b, block in enumerate(self.convs):
            if not isinstance(block, ResBlock):
                continue
            for name, out_res in (("conv1", res), ("conv2", res // 2)):
                if out_res in PATCH_MAP_SIZES and len(found) < MAX_PATCH_MAPS:
                    found.append((getattr(block, name)[-1].bias.shape[0], (b, name)))
            res //= 2
        return found

    def patch_features(self, image: Tensor, count: int = MAX_PATCH_MAPS) -> list[Tensor]:
        """The first `count` residual-branch outputs (no skip path) at 32x32 / 16x16, in forward order.

        Runs D only as deep as the last needed map, which is what makes patch-level steps cheap.
        """
        wanted = [where for _, where in self._patch_map_sources()[:count]]
        maps: list[Tensor] = []
        out = image
        for b, block in enumerate(self.convs):
            if not wanted or len(maps) == len(wanted):
                break
            if not isinstance(block, ResBlock):
                out = block(out)
                continue
            hidden = block.conv1(out)
            if (b, "conv1") in wanted:
                maps.append(hidden)
            branch = block.conv2(hidden)
            if (b, "conv2") in wanted:
                maps.append(branch)
            out = (branch + block.skip(out)) / math.sqrt(2)
        return maps


class PatchHeads(nn.Module):
    """Extra heads (3x3 conv -> bias + leaky-ReLU, one output channel) turning D's maps into patch logits.

    Kept outside `Discriminator` so a released `d` loads strictly and the heads start fresh.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList([ConvLayer(c, 1, 3) for c in channels])

    def forward(self, feature: Tensor, level: int) -> Tensor:
        return self.heads[level](feature)


def patch_logits(d: Discriminator, heads: PatchHeads, image: Tensor, level: int) -> Tensor:
    """Patch-level realism logits [B, 1, h, w] from map `level` of D through its own head."""
    feature = d.patch_features(image, count=level + 1)[level]
    return heads(feature, level)
