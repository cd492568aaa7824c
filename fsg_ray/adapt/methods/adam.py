"""AdAM (Zhao et al. 2022): modulate the kernels the importance probe ranks high, fine-tune the rest.

Reference: AdAM_main_adaptation.py. Kernels whose Fisher score (fsg_ray/adapt/probe.py) lies above the
`adam.quantile` percentile keep their pretrained weights and learn a modulation; the others are
fine-tuned and their modulation is held at zero. The choice is made per output kernel of G's styled convs
(and, separately, per channel of their style affines) and of D's residual blocks, with the reference's
exact scores; everything else follows its code too (docs/methods.md lists where that differs from the paper).
Training computes with the modulated weights (kernel_modulation.py); G_ema follows their folded values,
and checkpoints hold G_t and D folded too, so a run exports plain StyleGAN2 weights under every key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fsg_ray.adapt.filters import d_layers, g_layers
from fsg_ray.adapt.kernel_modulation import KernelModulation, discriminator_sites, generator_sites
from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.adapt.probe_artifact import PROBE_FILE, check_probe, probe_digest
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets.checkpoints import CheckpointError, load_state_strict
from fsg_ray.nets.stylegan2 import Discriminator, Generator

# G's parameters the reference never lets move: its noise strengths and activation biases inside the styled
# convs have their gradients zeroed (their modulation biases still train, with the same gradient).
G_ZEROED = ("noise.weight", "activate.bias")
D_FROZEN = ("convs.0.0.weight", "convs.0.1.bias")  # FromRGB; its modulation trains


def kernel_scores(fisher_g: dict[str, Tensor], fisher_d: dict[str, Tensor], g: Generator, d: Discriminator) -> dict[str, dict[str, Tensor]]:
    """Fisher score per output kernel, the reference's way, in three pools that each get their own cut:
    G's conv kernels (mean F of u + F of v), G's style-affine channels ((mean F of u + F of v + F of b) / 2),
    D's kernels (like the affines with the activation bias as b; skip convs, without a bias, are not halved)."""
    conv = {f"{n}.weight": fisher_g[f"{n}.weight:u"].mean() + fisher_g[f"{n}.weight:v"] for n in g_layers(g)}
    fc = {
        f"{n}.modulation.weight": (fisher_g[f"{n}.modulation.weight:u"].mean() + fisher_g[f"{n}.modulation.weight:v"] + fisher_g[f"{n}.modulation.bias:b"]) / 2
        for n in g_layers(g)
    }
    dk = {}
    for weight, bias in d_layers(d):
        score = fisher_d[f"{weight}:u"].mean() + fisher_d[f"{weight}:v"]
        dk[weight] = score if bias is None else (score + fisher_d[f"{bias}:b"]) / 2
    return {"g_conv": conv, "g_fc": fc, "d_conv": dk}


def important_kernels(scores: dict[str, dict[str, Tensor]], quantile: float) -> dict[str, Tensor]:
    """True for a kernel whose score is strictly above its pool's `quantile` percentile (linear interpolation,
    numpy's default, as the reference's np.percentile); at or below it the kernel is fine-tuned."""
    chosen = {}
    for pool in scores.values():
        cut = torch.quantile(torch.cat([s.flatten() for s in pool.values()]), quantile / 100)
        chosen |= {name: s > cut for name, s in pool.items()}
    return chosen


def _keep_grad(p: nn.Parameter, keep: Tensor) -> None:
    """Zeroes the gradient of `p` where `keep` is False on every backward; Adam then never moves those entries."""
    mask = keep.to(p.dtype)
    p.register_hook(lambda grad: grad * mask)


class AdAM(Method):
    name = "adam"
    artifact = PROBE_FILE

    def __init__(self, config):
        super().__init__(config)
        self.probe: dict[str, Any] | None = None

    def make_artifact(self, source: dict[str, Any], targets: FewShotImages, device: torch.device | str) -> dict[str, Any]:
        # Imported here: the probing run drives the loop, which imports this registry of methods.
        from fsg_ray.adapt.probe import run_probe

        return run_probe(source, targets, self.config, device)

    def use_artifact(self, artifact: dict[str, Any], source: dict[str, Any], targets: FewShotImages) -> None:
        check_probe(artifact, source, targets.images, self.config)
        self.probe = artifact

    def setup(self, nets: Networks) -> None:
        if self.probe is None:
            raise RuntimeError("adam: no importance probe; build the run with new_adaptation (or fsg_ray.adapt.run.prepare), which probes first")
        rng = torch.Generator().manual_seed(self.config.seed)
        self.g = KernelModulation(nets.g, generator_sites(nets.g), rng).attach()
        self.d = KernelModulation(nets.d, discriminator_sites(nets.d), rng).attach()
        scores = kernel_scores(self.probe["fisher_g"], self.probe["fisher_d"], nets.g, nets.d)
        self.important = important_kernels(scores, self.config.adam.quantile)
        self._freeze(nets)
        self._gate(nets)

    def _freeze(self, nets: Networks) -> None:
        """The reference trains G's styled convs (not the mapping, the 4x4 conv, the ToRGBs, the constant) and all
        of D but FromRGB; every modulation vector trains."""
        for name, p in nets.g.named_parameters():
            p.requires_grad_(name.startswith("convs.") and not name.endswith(G_ZEROED))
        for name, p in nets.d.named_parameters():
            p.requires_grad_(name not in D_FROZEN)

    @torch.no_grad()
    def _gate(self, nets: Networks) -> None:
        """Important kernels: pretrained weight (and bias) frozen, modulation free. The others: weight trained,
        the modulation's per-kernel vector held at zero (u is shared by all kernels of a layer and stays free)."""
        g_params, d_params = dict(nets.g.named_parameters()), dict(nets.d.named_parameters())
        for layer in g_layers(nets.g):
            conv, fc = self.important[f"{layer}.weight"], self.important[f"{layer}.modulation.weight"]
            _keep_grad(g_params[f"{layer}.weight"], ~conv.view(1, -1, 1, 1, 1))
            _keep_grad(g_params[f"{layer}.modulation.weight"], ~fc.view(-1, 1))
            _keep_grad(g_params[f"{layer}.modulation.bias"], ~fc)
            for key, keep in ((f"{layer}.weight:v", conv), (f"{layer}.modulation.weight:v", fc), (f"{layer}.modulation.bias:b", fc)):
                self.g.vectors[key][~keep] = 0
                _keep_grad(self.g.vectors[key], keep)
        for weight, bias in d_layers(nets.d):
            kernels = self.important[weight]
            _keep_grad(d_params[weight], ~kernels.view(-1, 1, 1, 1))
            self.d.vectors[f"{weight}:v"][~kernels] = 0
            _keep_grad(self.d.vectors[f"{weight}:v"], kernels)
            if bias is not None:
                _keep_grad(d_params[bias], ~kernels)
                self.d.vectors[f"{bias}:b"][~kernels] = 0
                _keep_grad(self.d.vectors[f"{bias}:b"], kernels)

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for p in nets.g.parameters() if p.requires_grad] + self.g.parameters()

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for p in nets.d.parameters() if p.requires_grad] + list(nets.heads.parameters()) + self.d.parameters()

    def ema_target(self, nets: Networks) -> list[Tensor]:
        folded = self.g.folded()
        return [folded[name] for name, _ in nets.g.named_parameters()]

    def network_states(self, nets: Networks) -> dict[str, dict[str, Tensor]]:
        """The adapted G_t and D with their modulation folded in: plain StyleGAN2 weights under the field's keys."""
        return {"g": self.g.folded(), "d": self.d.folded()}

    def state_dict(self) -> dict[str, Any]:
        """The raw weights behind the folded `g` and `d`, the modulation vectors, and which probe chose the kernels."""
        return {
            "g_weights": self.g.net.state_dict(),
            "d_weights": self.d.net.state_dict(),
            "g_vectors": self.g.state_dict(),
            "d_vectors": self.d.state_dict(),
            "probe_sha256": probe_digest(self.probe),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["probe_sha256"] != probe_digest(self.probe):
            raise CheckpointError(f"adam: the checkpoint was trained with another importance probe (sha256 {state['probe_sha256'][:12]}) than this run's {PROBE_FILE} ({probe_digest(self.probe)[:12]})")
        load_state_strict(self.g.net, state["g_weights"], "method_state[g_weights]")
        load_state_strict(self.d.net, state["d_weights"], "method_state[d_weights]")
        self.g.load_state_dict(state["g_vectors"])
        self.d.load_state_dict(state["d_vectors"])
