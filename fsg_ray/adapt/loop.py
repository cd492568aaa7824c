"""One adaptation step and the loop around it, in plain PyTorch (no Ray): SPEC.md §2-§3 in code order.

Per iteration: D step (adversarial), lazy R1, G step (adversarial + lambda * L_dist), lazy path
length, EMA. The same object runs in a test, a notebook, or unchanged inside a Ray Train worker,
which only supplies `Distributed` (gradient averaging) and a `RunSink` (where checkpoints go).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from fsg_ray.adapt.anchors import Latents, is_anchor_iteration, make_anchors, phase_latents
from fsg_ray.adapt.augment import AdaptiveAugment
from fsg_ray.adapt.cdc import cdc_loss_official, cdc_loss_paper, sample_layers
from fsg_ray.adapt.losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty
from fsg_ray.adapt.methods import Method, Networks, make_method
from fsg_ray.adapt.noise import NoiseStrengths
from fsg_ray.adapt.precision import MixedPrecision
from fsg_ray.config import AdaptConfig, config_to_dict
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets.checkpoints import FORMAT, build_discriminator, build_generator, load_state_strict, model_config
from fsg_ray.nets.stylegan2 import Discriminator, PatchHeads, Synthesis, patch_logits


class Distributed(Protocol):
    """How a step talks to its peers; a single process has none."""

    rank: int

    def sync_gradients(self, params: list[nn.Parameter]) -> None: ...

    def mean(self, value: float) -> float: ...

    def total(self, values: Tensor) -> Tensor:
        """Elementwise sum over all workers, on the CPU."""
        ...


class SingleProcess:
    rank = 0

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        pass

    def mean(self, value: float) -> float:
        return value

    def total(self, values: Tensor) -> Tensor:
        return values


def set_requires_grad(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def init_networks(source: dict[str, Any], device: torch.device | str = "cpu") -> Networks:
    """G_t and G_s from the source `g`, G_ema from `g_ema`, D from `d`, fresh patch heads (SPEC §3 Init)."""
    g_key = "g" if "g" in source else "g_ema"
    g = build_generator(source, g_key).train()
    g_source = build_generator(source, g_key).eval().requires_grad_(False)
    g_ema = build_generator(source, "g_ema" if "g_ema" in source else g_key).eval().requires_grad_(False)
    if "d" in source:
        d = build_discriminator(source).train()
    else:
        warnings.warn(f"{source.get('uri', 'source')}: has no discriminator; D starts from random weights", stacklevel=2)
        d = Discriminator(model_config(source))
    nets = Networks(g=g, g_source=g_source, g_ema=g_ema, d=d, heads=PatchHeads(d.patch_map_channels()))
    for module in (nets.g, nets.g_source, nets.g_ema, nets.d, nets.heads):
        module.to(device)
    return nets


def lazy_adam(params: list[nn.Parameter], lr: float, reg_every: int) -> torch.optim.Adam:
    """Adam with lr and betas rescaled for a regulariser run every `reg_every` steps (StyleGAN2 §B)."""
    ratio = reg_every / (reg_every + 1)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0**ratio, 0.99**ratio))


@dataclass
class StepStats:
    step: int
    d_loss: float
    g_loss: float
    cdc_loss: float
    r1: float | None
    path_length: float | None
    anchor: bool


class Adaptation:
    """The state of a run and its step functions, named as the paper runs them."""

    def __init__(self, nets: Networks, targets: FewShotImages, config: AdaptConfig, dist: Distributed | None = None, method: Method | None = None):
        self.nets = nets
        # Everything computes where the networks are; random draws stay on CPU generators so that a
        # seed gives the same z, images and schedule on any device.
        self.device = next(nets.g.parameters()).device
        self.targets = FewShotImages(targets.images.to(self.device))
        self.config = config
        self.dist = dist or SingleProcess()
        self.method = method or make_method(config)
        self.method.check(nets.d)
        self.method.setup(nets)
        self.augment = AdaptiveAugment(config.augment) if config.augment.enabled or self.method.augments else None
        trained = self.method.g_parameters(nets)
        self.noise = NoiseStrengths(config.noise, nets, trained)
        self.g_params = self.noise.trainable(trained)
        self.d_params = self.method.d_parameters(nets)
        opt = config.optim
        self.g_optim = lazy_adam(self.g_params, opt.lr, opt.g_reg_every)
        self.d_optim = lazy_adam(self.d_params, opt.lr, opt.d_reg_every)
        self.precision = MixedPrecision(opt.precision, self.device)
        g = nets.g.config
        self.style_dim, self.n_latent = g.style_dim, g.n_latent
        self.schedule_rng = torch.Generator()
        self.sample_rng = torch.Generator()
        anchor_rng = torch.Generator().manual_seed(config.seed)
        self.anchors = make_anchors(config.anchors, self.style_dim, anchor_rng) if self.method.uses_anchors else None
        self.step = 0
        self.mean_path_length = 0.0
        self.ema_decay = config.ema_decay

    # --- sampling -------------------------------------------------------------------------------

    def _latents(self, batch: int) -> Latents:
        return self._on_device(phase_latents(self.step, batch, self.style_dim, self.anchors, self.config.anchors, self.config.optim.mixing, self.n_latent, self.sample_rng))

    def _on_device(self, latents: Latents) -> Latents:
        return Latents([z.to(self.device) for z in latents.z], latents.inject_index)

    def _generate(self, latents: Latents) -> Synthesis:
        g = self.nets.g
        return g.synthesis(g.latents(self.method.map_z(latents.z), inject_index=latents.inject_index), noise="random")

    def _patch_level(self) -> int | None:
        """None = image-level D (anchor iterations, always for methods without anchors, and with off_anchor_d=image)."""
        anchors = self.config.anchors
        if not self.method.uses_anchors or is_anchor_iteration(self.step, anchors) or anchors.off_anchor_d == "image":
            return None
        return int(torch.randint(0, anchors.patch_levels, (), generator=self.schedule_rng))

    def _realism(self, images: Tensor, patch_level: int | None) -> Tensor:
        if self.augment is not None:
            images = self.augment(images)
        if patch_level is None:
            return self.nets.d(images)
        return patch_logits(self.nets.d, self.nets.heads, images, patch_level)

    @staticmethod
    def _zero_grad(optim: torch.optim.Optimizer) -> None:
        # Zero-filled, not cleared, as torch 1.7's zero_grad did for the reference: a parameter that has
        # once had a gradient takes an Adam step on every later step of its optimizer, also when this
        # phase leaves it unused (D's layers after the patch map, the heads on anchor iterations).
        optim.zero_grad(set_to_none=False)

    def _sync(self, params: list[nn.Parameter]) -> None:
        """What happens between a phase's backward and its optimizer step: averaging over ranks, then the method's say."""
        self.dist.sync_gradients(params)
        self.method.before_update(params)

    def _apply(self, optim: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor) -> None:
        """One fp32 optimizer step on `loss` (the lazy regularisers)."""
        self._zero_grad(optim)
        loss.backward()
        self._sync(params)
        optim.step()

    # --- the phases -----------------------------------------------------------------------------

    def d_step(self) -> float:
        set_requires_grad(self.g_params, False)
        set_requires_grad(self.d_params, False)
        set_requires_grad(self.method.phase_parameters("d", self.d_params, self.step), True)
        with self.precision.autocast():
            with torch.no_grad():
                fake = self._generate(self._latents(self.config.batch)).image
            real = self.targets.sample(self.config.batch, self.sample_rng)
            real_logits = self._realism(real, self._patch_level()).float()
            fake_logits = self._realism(fake, self._patch_level()).float()
        if self.augment is not None:
            self.augment.observe_real_logits(real_logits.detach(), self.dist.total)
        loss = d_logistic_loss(real_logits, fake_logits)
        self._zero_grad(self.d_optim)
        self.precision.backward("d", loss)
        self.precision.step("d", self.d_optim, self._sync, self.d_params)
        return loss.item()

    def r1_step(self) -> float:
        """Lazy R1 on the reals, through the D mode of this iteration, scaled by its interval."""
        real = self.targets.sample(self.config.batch, self.sample_rng).requires_grad_(True)
        real_logits = self._realism(real, self._patch_level())
        penalty = r1_penalty(real_logits, real)
        opt = self.config.optim
        # The zero-weighted logit keeps every D parameter in the graph, as the reference does.
        loss = opt.r1_gamma / 2 * penalty * opt.d_reg_every + 0 * real_logits.flatten()[0]
        self._apply(self.d_optim, self.d_params, loss)
        return penalty.item()

    def g_step(self) -> tuple[float, float]:
        trained = self.method.phase_parameters("g", self.g_params, self.step)
        set_requires_grad(self.g_params, False)
        set_requires_grad(trained, True)
        set_requires_grad(self.d_params, False)
        with self.precision.autocast():
            fake = self._generate(self._latents(self.config.batch)).image
            fake_logits = self._realism(fake, self._patch_level()).float()
        adversarial = g_nonsaturating_loss(fake_logits)
        if not trained:  # the batch is drawn and scored as the reference does, for the reported loss only
            return adversarial.item(), 0.0
        # One backward per term of the loss: the adversarial graph is freed before the CDC forward
        # builds its own, so the step never holds two generator graphs at once.
        self._zero_grad(self.g_optim)
        self.precision.backward("g", adversarial)
        dist_loss = torch.zeros(())
        if self.method.uses_cdc:
            dist_loss = self.distance_consistency()
            self.precision.backward("g", self.config.cdc.weight * dist_loss)
        for penalty in (self.method.g_penalty(self.nets), self.noise.penalty()):
            if penalty is not None:
                self.precision.backward("g", penalty)
        self.precision.step("g", self.g_optim, self._sync, self.g_params)
        return adversarial.item(), dist_loss.item()

    def distance_consistency(self) -> Tensor:
        """L_dist on fresh z (no anchors, no mixing); G_s without gradients, G_t with.

        The generators run in the run's precision; the similarities and the KL in fp32.
        """
        cdc = self.config.cdc
        z = torch.randn(cdc.batch, self.style_dim, generator=self.sample_rng).to(self.device)
        with self.precision.autocast():
            with torch.no_grad():
                source = self.nets.g_source.synthesis(self.nets.g_source.latents(z), noise="random").features
            target = self.nets.g.synthesis(self.nets.g.latents(z), noise="random").features
        source, target = [f.float() for f in source], [f.float() for f in target]
        if cdc.variant == "paper":
            return cdc_loss_paper(source, target, list(range(1, self.n_latent - 1)))
        return cdc_loss_official(source, target, sample_layers(cdc.batch, self.n_latent, self.sample_rng))

    def path_length_step(self) -> float:
        opt = self.config.optim
        batch = max(1, self.config.batch // opt.path_batch_shrink)
        latents = self._on_device(phase_latents(1, batch, self.style_dim, None, self.config.anchors, opt.mixing, self.n_latent, self.sample_rng))
        g = self.nets.g
        w = g.latents(self.method.map_z(latents.z), inject_index=latents.inject_index)
        # The penalty differentiates the images with respect to W, also where no mapping weight trains (RICK).
        out = g.synthesis(w if w.requires_grad else w.requires_grad_(True), noise="random")
        penalty, new_mean = path_length_penalty(out.image, out.latents, self.mean_path_length, opt.path_decay)
        loss = opt.path_weight * opt.g_reg_every * penalty + 0 * out.image.flatten()[0]
        self._apply(self.g_optim, self.g_params, loss)
        self.mean_path_length = self.dist.mean(new_mean)
        return penalty.item()

    @torch.no_grad()
    def ema_update(self) -> None:
        frozen = self.noise.frozen
        for (name, p_ema), p in zip(self.nets.g_ema.named_parameters(), self.method.ema_target(self.nets)):
            if name not in frozen:
                p_ema.lerp_(p, 1.0 - self.ema_decay)
        self.method.average(self.nets, self.ema_decay)

    def _seed_step(self) -> None:
        """Every random draw of step k is a function of (seed, k, rank): resuming needs no RNG state.

        The schedule (patch-head choices) is shared by all ranks so they use the same parameters;
        latents, real images, flips and noise differ per rank.
        """
        base = (self.config.seed * 2**24 + self.step) * 2**12
        self.schedule_rng.manual_seed(base)
        self.sample_rng.manual_seed(base + 1 + self.dist.rank)
        torch.manual_seed(base + 2**11 + self.dist.rank)

    def train_step(self) -> StepStats:
        opt = self.config.optim
        self._seed_step()
        anchor = self.method.uses_anchors and is_anchor_iteration(self.step, self.config.anchors)
        self.method.begin_step(self)
        d_loss = self.d_step()
        r1 = self.r1_step() if self.step % opt.d_reg_every == 0 else None
        g_loss, cdc_loss = self.g_step()
        trains_g = bool(self.method.phase_parameters("g", self.g_params, self.step))
        path = self.path_length_step() if self.method.uses_path_length and trains_g and self.step % opt.g_reg_every == 0 else None
        self.ema_update()
        stats = StepStats(self.step, d_loss, g_loss, cdc_loss, r1, path, anchor)
        self.step += 1
        return stats

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self, source_uri: str, target: str) -> dict[str, Any]:
        """Everything an exact resume needs, in fsg-ray's weights-only format."""
        n = self.nets
        return {
            "format": FORMAT,
            "model": config_to_dict(n.g.config),
            "method": self.method.name,
            "source": source_uri,
            "target": target,
            "config": config_to_dict(self.config),
            "step": self.step,
            **self.method.network_states(n),
            "g_ema": n.g_ema.state_dict(),
            "heads": n.heads.state_dict(),
            "g_optim": self.g_optim.state_dict(),
            "d_optim": self.d_optim.state_dict(),
            "method_state": self.method.state_dict(),
            "augment": None if self.augment is None else self.augment.state_dict(),
            "anchors": self.anchors,
            "mean_path_length": self.mean_path_length,
            "ema_decay": self.ema_decay,
            "grad_scalers": self.precision.state_dict(),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `checkpoint` (same config, same world size)."""
        n = self.nets
        where = f"{ckpt.get('uri', 'checkpoint')} step {ckpt.get('step')}"
        for key, module in (("g", n.g), ("g_ema", n.g_ema), ("d", n.d), ("heads", n.heads)):
            load_state_strict(module, ckpt[key], f"{where}[{key}]")
        self.g_optim.load_state_dict(ckpt["g_optim"])
        self.d_optim.load_state_dict(ckpt["d_optim"])
        for optim in (self.g_optim, self.d_optim):
            for p in optim.state:  # Adam state means it has had a gradient: keep stepping it as `_apply` does
                p.grad = torch.zeros_like(p)
        self.method.load_state_dict(ckpt["method_state"])  # after g and d: a method that folds them restores their raw weights
        if self.augment is not None:
            self.augment.load_state_dict(ckpt["augment"])
        self.anchors = ckpt["anchors"]
        self.mean_path_length = ckpt["mean_path_length"]
        # Checkpoints from before mixed precision have none: they are fp32 runs, whose scalers hold no state.
        self.precision.load_state_dict(ckpt.get("grad_scalers", {"g": {}, "d": {}}))
        self.step = ckpt["step"]


def new_adaptation(
    source: dict[str, Any], targets: FewShotImages, config: AdaptConfig, dist: Distributed | None = None, device: torch.device | str = "cpu", artifact: dict[str, Any] | None = None
) -> Adaptation:
    """A run at step 0. A method with a per-run artifact (AdAM's probe) uses `artifact`, else computes it here."""
    method = make_method(config)
    if method.artifact is not None:
        method.use_artifact(artifact if artifact is not None else method.make_artifact(source, targets, device), source, targets)
    return Adaptation(init_networks(source, device), targets, config, dist, method)
