"""AdAM's kernel modulation (Zhao et al. 2022): learned low-rank changes of pretrained weights, foldable into them.

A modulated weight W becomes W * (1 + M) with M a rank-one product of two small vectors u, v, and a bias b
becomes b + b_vec. Only the vectors are new; they start at (almost) zero, so the modulated network starts as
the pretrained one. The exact arithmetic is the reference code's (yunqing-me/RICK, model_adam.py),
including two quirks stated in docs/methods.md: a conv's M is the outer product u (in*k*k) x v (out)
*reshaped* to the kernel's [out, in, k, k] layout (not aligned with output kernels), and a style
affine's modulated weight is scaled by 1/sqrt(out) instead of the layer's 1/sqrt(in).

The modulation is applied by forward hooks that let a layer compute with its effective weight while its
own parameter (and so the state dict, in the field's key names) keeps the raw value. `folded` gives the
effective values as plain tensors: a modulated network exports and is averaged as a plain StyleGAN2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fsg_ray.nets.stylegan2 import Discriminator, EqualConv2d, EqualLinear, FusedLeakyReLU, Generator, ModulatedConv2d, NoiseInjection, ToRGB

INIT_STD = 1e-7  # the reference's initial scale of u and v: M starts ~1e-14, the network at its pretrained self


@dataclass(frozen=True)
class Site:
    """One modulated parameter: `module.attr` of the network, and how its effective value is made."""

    module: str
    attr: str
    kind: str  # "conv" (u, v), "fc" (u, v) or "bias" (b)

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


def generator_sites(g: Generator) -> list[Site]:
    """Every parameter the reference modulates in G: the mapping network's linears, every modulated conv (its
    kernel and its style affine), the noise strengths, the activation biases and the ToRGB biases."""
    sites: list[Site] = []
    for name, module in g.named_modules():
        if isinstance(module, EqualLinear) and name.startswith("style."):
            sites += [Site(name, "weight", "fc"), Site(name, "bias", "bias")]
        elif isinstance(module, ModulatedConv2d):
            sites += [Site(name, "weight", "conv"), Site(f"{name}.modulation", "weight", "fc"), Site(f"{name}.modulation", "bias", "bias")]
        elif isinstance(module, NoiseInjection):
            sites.append(Site(name, "weight", "bias"))
        elif isinstance(module, FusedLeakyReLU):
            sites.append(Site(name, "bias", "bias"))
        elif isinstance(module, ToRGB):
            sites.append(Site(name, "bias", "bias"))
    return sites


def discriminator_sites(d: Discriminator) -> list[Site]:
    """Every conv kernel and activation bias of D's FromRGB and residual blocks (not its final conv and linears)."""
    sites: list[Site] = []
    for name, module in d.convs.named_modules(prefix="convs"):
        if isinstance(module, EqualConv2d):
            sites.append(Site(name, "weight", "conv"))
        elif isinstance(module, FusedLeakyReLU):
            sites.append(Site(name, "bias", "bias"))
    return sites


def vector_shapes(site: Site, p: Tensor) -> dict[str, tuple[int, ...]]:
    """The modulation vectors of a site, by suffix: u and v for kernels and linears, b for biases."""
    if site.kind == "conv":  # [(1,) out, in, k, k]: u over in*k*k, v over out
        out = p.shape[-4]
        return {"u": (p[0].numel() // out if p.dim() == 5 else p[0].numel(),), "v": (out,)}
    if site.kind == "fc":  # [out, in]
        return {"u": (p.shape[1],), "v": (p.shape[0],)}
    return {"b": tuple(p.shape)}


def effective(site: Site, p: Tensor, vec: dict[str, Tensor]) -> Tensor:
    """The value the layer computes with, in the parameter's own parametrisation (before its run-time scale)."""
    if site.kind == "conv":
        # torch.ger(u, v) is [in*k*k, out]; the reference views it as [out, in, k, k] without transposing.
        return p * (1 + torch.outer(vec["u"], vec["v"]).reshape(p.shape))
    if site.kind == "fc":
        out, fan_in = p.shape
        # The reference's modulated linear scales by 1/sqrt(out), the layer by 1/sqrt(in): the ratio goes in here.
        return p * (1 + torch.outer(vec["v"], vec["u"])) * math.sqrt(fan_in / out)
    return p + vec["b"]


class KernelModulation:
    """The modulation vectors of one network, keyed `<parameter name>:<u|v|b>`, and the hooks that apply them."""

    def __init__(self, net: nn.Module, sites: list[Site], generator: torch.Generator):
        self.net = net
        self.sites = sites
        params = dict(net.named_parameters())
        device = next(net.parameters()).device
        self.by_site: dict[str, dict[str, nn.Parameter]] = {}
        for site in sites:
            shapes = vector_shapes(site, params[site.name])
            self.by_site[site.name] = {
                suffix: nn.Parameter((torch.zeros(shape) if suffix == "b" else torch.randn(shape, generator=generator) * INIT_STD).to(device))
                for suffix, shape in shapes.items()
            }
        self.vectors = {f"{name}:{suffix}": p for name, vec in self.by_site.items() for suffix, p in vec.items()}
        self.handles: list[RemovableHandle] = []

    def of(self, site: Site) -> dict[str, nn.Parameter]:
        return self.by_site[site.name]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.vectors.values())

    def attach(self) -> KernelModulation:
        """Hooks every modulated module so its forward computes with the effective weights."""
        by_module: dict[str, list[Site]] = {}
        for site in self.sites:
            by_module.setdefault(site.module, []).append(site)
        for module_name, sites in by_module.items():
            module = self.net.get_submodule(module_name)
            self.handles.append(module.register_forward_pre_hook(self._shadow(sites)))
            self.handles.append(module.register_forward_hook(_unshadow([s.attr for s in sites]), always_call=True))
        return self

    def _shadow(self, sites: list[Site]) -> Callable[..., None]:
        def hook(module: nn.Module, _: tuple) -> None:
            # An instance attribute is found before nn.Module's parameter lookup: for this forward `self.weight`
            # is the effective tensor, while the registered Parameter (state dict, optimiser) stays raw.
            for site in sites:
                module.__dict__[site.attr] = effective(site, module._parameters[site.attr], self.of(site))

        return hook

    def folded(self) -> dict[str, Tensor]:
        """The network's state dict with every modulated parameter replaced by its effective value."""
        state = dict(self.net.state_dict())
        params = dict(self.net.named_parameters())
        for site in self.sites:
            state[site.name] = effective(site, params[site.name], self.of(site)).detach()
        return state

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.vectors.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.vectors):
            missing = sorted(set(self.vectors) ^ set(state))
            raise KeyError(f"kernel modulation: keys differ, first {missing[0]!r}")
        with torch.no_grad():
            for k, v in self.vectors.items():
                v.copy_(state[k])


def _unshadow(attrs: list[str]) -> Callable[..., None]:
    def hook(module: nn.Module, _: tuple, __: object) -> None:
        for attr in attrs:
            module.__dict__.pop(attr, None)

    return hook
