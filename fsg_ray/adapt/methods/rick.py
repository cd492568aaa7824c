"""RICK (Zhao et al. 2023): estimate filter importance while adapting; preserve the important filters, prune the least.

Reference: train_dynamic_update_prune.py (yunqing-me/RICK). After `rick.warmup_steps` steps that train only D's
final layers, and every `rick.fisher_every` steps from then on, the per-image Fisher information
(fsg_ray/adapt/fisher.py) of G_ema and of an EMA of D scores every filter of G's styled convs (their kernels
and, separately, their style affines' channels) and of D's residual blocks. In each pool, filters above the
`rick.freeze_quantile` percentile are preserved (no gradient until the next estimate), filters at or below
`rick.prune_quantile` are pruned (zeroed with their gradients, for good: the pruned set only grows), the rest
fine-tuned. docs/methods.md lists where the reference differs from the paper; fsg-ray follows the reference.
Pruned filters stay in the networks as zeros, so a RICK run exports plain StyleGAN2 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fsg_ray.adapt.filters import d_layers, g_layers
from fsg_ray.adapt.fisher import per_image_fisher
from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.nets.checkpoints import load_state_strict
from fsg_ray.nets.stylegan2 import Discriminator, Generator

if TYPE_CHECKING:
    from fsg_ray.adapt.loop import Adaptation

D_FINAL = ("final_conv.", "final_linear.")  # what D trains during the warm-up


def trains_g(name: str) -> bool:
    """The reference's G optimiser holds the styled convs only: not the mapping, the 4x4 conv, the ToRGBs, the constant."""
    return name.startswith("convs.")


def trains_d(name: str) -> bool:
    """The reference's D optimiser holds the residual blocks and the final layers, not FromRGB (`convs.0`)."""
    return (name.startswith("convs.") and not name.startswith("convs.0.")) or name.startswith(D_FINAL)


def estimate_seed(seed: int, step: int) -> int:
    """Seed of the estimate at `step`: its shots and G's noise, the same on every rank (the reference draws the
    shots from its data loader)."""
    return (seed * 2**24 + step) * 2**12 + 3


@dataclass(frozen=True)
class Unit:
    """Filters that share one score per filter: the parameters they span (name -> filter axis) and the pool
    whose percentiles cut them. `strict_prune`: pruned strictly below the cut (the reference's D skip convs)."""

    name: str
    params: tuple[tuple[str, int], ...]
    pool: str
    strict_prune: bool = False


def g_units(g: Generator) -> list[Unit]:
    """Per styled conv: its output kernels ([1, out, in, k, k], axis 1), and its style affine's output channels."""
    units = []
    for layer in g_layers(g):
        units.append(Unit(f"{layer}.weight", ((f"{layer}.weight", 1),), "g_conv"))
        units.append(Unit(f"{layer}.modulation.weight", ((f"{layer}.modulation.weight", 0), (f"{layer}.modulation.bias", 0)), "g_fc"))
    return units


def d_units(d: Discriminator) -> list[Unit]:
    """Per residual-block conv: its output kernels with their activation bias; skip convs have no bias."""
    return [
        Unit(weight, ((weight, 0),) if bias is None else ((weight, 0), (bias, 0)), "d_conv", strict_prune=bias is None)
        for weight, bias in d_layers(d)
    ]


def filter_scores(fisher_g: dict[str, Tensor], fisher_d: dict[str, Tensor], units: list[Unit]) -> dict[str, Tensor]:
    """One score per filter, the reference's way: a kernel's mean F over its weights; a style-affine channel's
    (mean F of its weight row + F of its bias) / 2; a D kernel's (mean F + F of its activation bias) / 2,
    a skip kernel's mean F alone."""
    scores = {}
    for unit in units:
        fisher = fisher_g if unit.pool[0] == "g" else fisher_d
        (weight, axis), *bias = unit.params
        f = fisher[weight]
        score = f.mean(dim=[i for i in range(f.dim()) if i != axis])
        scores[unit.name] = (score + fisher[bias[0][0]]) / 2 if bias else score
    return scores


def decide(scores: dict[str, Tensor], units: list[Unit], freeze_quantile: float, prune_quantile: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(preserved, pruned) filter masks: above the pool's `freeze_quantile` percentile, at or below its
    `prune_quantile` one (below, for strict units). Percentiles as numpy's (linear), in float64 as the reference's."""
    preserved, pruned = {}, {}
    for pool in dict.fromkeys(unit.pool for unit in units):
        members = [unit for unit in units if unit.pool == pool]
        values = torch.cat([scores[unit.name].flatten() for unit in members]).double()
        freeze_cut, prune_cut = torch.quantile(values, torch.tensor([freeze_quantile, prune_quantile], dtype=torch.float64) / 100)
        for unit in members:
            score = scores[unit.name].double()
            preserved[unit.name] = score > freeze_cut
            pruned[unit.name] = score < prune_cut if unit.strict_prune else score <= prune_cut
    return preserved, pruned


class RICK(Method):
    name = "rick"

    def setup(self, nets: Networks) -> None:
        self.options = self.config.rick
        for name, p in nets.g.named_parameters():
            p.requires_grad_(trains_g(name))
        for name, p in nets.d.named_parameters():
            p.requires_grad_(trains_d(name))
        self.d_final = [p for name, p in nets.d.named_parameters() if name.startswith(D_FINAL)]
        device = next(nets.d.parameters()).device
        # The reference also averages D (from the source `d`, with G_ema's decay): its Fisher is measured on the average.
        self.d_ema = Discriminator(nets.d.config).to(device).eval().requires_grad_(False)
        self.d_ema.load_state_dict(nets.d.state_dict())
        self.units = g_units(nets.g) + d_units(nets.d)
        params = {"g": dict(nets.g.named_parameters()), "d": dict(nets.d.named_parameters())}
        of = lambda unit, name: params[unit.pool[0]][name]  # noqa: E731
        self.gates = {id(of(unit, name)): (unit.name, axis) for unit in self.units for name, axis in unit.params}
        self.sizes = [of(unit, unit.params[0][0]).shape[unit.params[0][1]] for unit in self.units]
        # The reference reads the same pre-drawn z at every estimate (_noise/NNNN.pt): drawn once here, from `seed`.
        samples = self.options.fisher_batches * self.config.batch
        self.fisher_z = torch.randn(samples, nets.g.style_dim, generator=torch.Generator().manual_seed(self.config.seed))
        self.scores: dict[str, Tensor] = {}
        self.preserved: dict[str, Tensor] = {}
        self.pruned: dict[str, Tensor] = {}
        self._index: dict[str, tuple[Tensor, Tensor]] = {}

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for name, p in nets.g.named_parameters() if trains_g(name)]

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for name, p in nets.d.named_parameters() if trains_d(name)]

    def phase_parameters(self, phase: str, params: list[nn.Parameter], step: int) -> list[nn.Parameter]:
        """The warm-up trains D's final layers alone and no G (the reference still scores its G batch)."""
        if step >= self.options.warmup_steps:
            return params
        return [] if phase == "g" else self.d_final

    def begin_step(self, run: Adaptation) -> None:
        since = run.step - self.options.warmup_steps
        if since >= 0 and since % self.options.fisher_every == 0:
            self.update(self.estimate(run))

    def estimate(self, run: Adaptation) -> dict[str, Tensor]:
        """Filter scores from the Fisher of G_ema and D_ema: computed by rank 0 and sent to every rank, so all
        ranks gate the same filters even where a GPU's backward is not bit-reproducible."""
        names = [name for unit in self.units for name, _ in unit.params]
        if run.dist.rank == 0:
            draw = estimate_seed(self.config.seed, run.step)
            reals = run.targets.sample(len(self.fisher_z), torch.Generator().manual_seed(draw))
            g_ema = run.nets.g_ema
            g_params = {k: p for k, p in g_ema.named_parameters() if k in names}
            d_params = {k: p for k, p in self.d_ema.named_parameters() if k in names}
            fisher_g, fisher_d = per_image_fisher(g_ema, self.d_ema, g_params, d_params, self.fisher_z.to(run.device), reals, draw)
            scores = filter_scores({k: v.cpu() for k, v in fisher_g.items()}, {k: v.cpu() for k, v in fisher_d.items()}, self.units)
            flat = torch.cat([scores[unit.name] for unit in self.units])
        else:
            flat = torch.zeros(sum(self.sizes))
        flat = run.dist.total(flat)  # a broadcast: every rank but 0 adds zeros
        return {unit.name: part for unit, part in zip(self.units, flat.split(self.sizes))}

    def update(self, scores: dict[str, Tensor]) -> None:
        """Adopts new scores: the preserved set is replaced, the pruned set grows (the reference's memory of pruned filters)."""
        preserved, pruned = decide(scores, self.units, self.options.freeze_quantile, self.options.prune_quantile)
        self.scores, self.preserved = scores, preserved
        self.pruned = {k: self.pruned[k] | v for k, v in pruned.items()} if self.pruned else pruned
        self._index = {}

    def _indices(self, unit: str, device: torch.device) -> tuple[Tensor, Tensor]:
        if unit not in self._index:
            self._index[unit] = (self.preserved[unit].nonzero().flatten().to(device), self.pruned[unit].nonzero().flatten().to(device))
        return self._index[unit]

    @torch.no_grad()
    def before_update(self, params: list[nn.Parameter]) -> None:
        """As the reference after each backward: preserved filters lose their gradient; pruned filters are set to
        zero with their gradient (Adam, with beta1 = 0, then leaves them at zero)."""
        if not self.preserved:
            return
        for p in params:
            gate = self.gates.get(id(p))
            if gate is None or p.grad is None:
                continue
            unit, axis = gate
            preserved, pruned = self._indices(unit, p.device)
            p.grad.index_fill_(axis, preserved, 0)
            p.index_fill_(axis, pruned, 0)
            p.grad.index_fill_(axis, pruned, 0)

    @torch.no_grad()
    def average(self, nets: Networks, decay: float) -> None:
        for p_ema, p in zip(self.d_ema.parameters(), nets.d.parameters()):
            p_ema.lerp_(p, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        """D_ema and the latest estimate: its scores, the preserved filters, and every filter pruned so far."""
        return {"d_ema": self.d_ema.state_dict(), "scores": self.scores, "preserved": self.preserved, "pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_state_strict(self.d_ema, state["d_ema"], "method_state[d_ema]")
        self.scores, self.preserved, self.pruned = state["scores"], state["preserved"], state["pruned"]
        self._index = {}
