"""Typed configuration of an adaptation run: one frozen dataclass tree built from YAML + `key=value` overrides.

Defaults are SPEC.md §2-§3 (the reference code's behaviour). The same object flows to the loop, Ray
Train workers, Tune trials and into every checkpoint, so a checkpoint alone says how it was made.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class CdcConfig:
    """Cross-domain distance consistency (SPEC §2).

    Both variants are averaged over their entries, so `weight` = 1000 fits either: "official" (the reference
    code) draws one layer per row, KL(P_s||P_t) / (N (N-1)); "paper" (Eq. 2) uses all L layers,
    KL(P_t||P_s) / (L N (N-1)). Eq. 2 as printed is a plain sum, L N (N-1) = 144 times larger at 256 px, batch 4.
    """

    weight: float = 1000.0
    batch: int = 4
    variant: str = "official"


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor regions and the patch-level discriminator (SPEC §3)."""

    count: int = 10
    every: int = 4
    std: float = 0.1
    patch_levels: int = 1
    # Which D judges the iterations away from the anchors: "patch" (SPEC §3, relaxed realism) or "image",
    # an ablation that keeps anchors and L_dist but drops the patch-level D.
    off_anchor_d: str = "patch"

    def __post_init__(self) -> None:
        if self.off_anchor_d not in ("patch", "image"):
            raise ConfigError(f"anchors.off_anchor_d: expected patch or image, got {self.off_anchor_d!r}")


@dataclass(frozen=True)
class OptimConfig:
    """StyleGAN2 optimisation with lazy regularisation (SPEC §3)."""

    lr: float = 0.002
    g_reg_every: int = 4
    d_reg_every: int = 16
    r1_gamma: float = 10.0
    path_weight: float = 2.0
    path_batch_shrink: int = 2
    path_decay: float = 0.01
    ema_decay: float | None = None  # None: follows the run length (AdaptConfig.ema_decay); a number is used as given
    mixing: float = 0.9
    precision: str = "fp32"  # fp32 | bf16 | fp16: dtype of G and D forward passes (adapt/precision.py); regularisers stay fp32

    def __post_init__(self) -> None:
        if self.ema_decay is not None and not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"optim.ema_decay: expected a value in [0, 1] or null (follow the run length), got {self.ema_decay}")


REFERENCE_EMA_DECAY = 0.5 ** (32 / 10000)  # the reference's decay: half-life 312.5 steps


def ema_decay_for_short_run(steps: int) -> float:
    """EMA decay with a half-life of a tenth of the run.

    The reference decay (half-life 312 steps) suits the paper's 5000-step runs; after a few hundred steps
    it leaves G_ema mostly the source, so short runs (the demo, the toy benchmark) would show and
    measure the source instead of what G_t learned.
    """
    if steps < 1:
        raise ConfigError(f"steps: must be >= 1 to size an EMA, got {steps}")
    return 0.5 ** (10 / steps)


@dataclass(frozen=True)
class BaselineConfig:
    """Options of the comparison methods (SPEC §5); each is read only by its own method (docs/methods.md)."""

    freeze_d_blocks: int = 4  # freezed: D residual blocks frozen after FromRGB (FreezeD's StyleGAN setting: down to 16 px at 256 px)
    ewc_weight: float = 5e8  # ewc: lambda of the penalty (see docs/methods.md on this value)
    ewc_samples: int = 256  # ewc: generated images whose log-likelihood gradients estimate the Fisher information

    def __post_init__(self) -> None:
        if self.freeze_d_blocks < 0:
            raise ConfigError(f"baselines.freeze_d_blocks: expected a non-negative integer, got {self.freeze_d_blocks}")
        if self.ewc_samples < 1:
            raise ConfigError(f"baselines.ewc_samples: expected a positive integer, got {self.ewc_samples}")
        if self.ewc_weight < 0:
            raise ConfigError(f"baselines.ewc_weight: expected a non-negative weight, got {self.ewc_weight}")


@dataclass(frozen=True)
class AdamConfig:
    """AdAM (Zhao et al. 2022, docs/methods.md): importance probing, then kernel modulation of the important kernels.

    Defaults are the reference's run scripts (yunqing-me/RICK `_bash_importance_probing.sh`,
    `_bash_main_adaptation.sh`, FFHQ -> Babies).
    """

    quantile: float = 50.0  # percentile (0-100) of the Fisher scores above which a kernel is important (--fisher_quantile; 75 for AFHQ-Cat)
    probe_steps: int = 500  # probing iterations training only the modulation before the Fisher is measured (--fisher_iter)
    fisher_batches: int = 250  # batches of `batch` generated images the Fisher averages over, one gradient per image (--num_batch_fisher)

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 100.0:
            raise ConfigError(f"adam.quantile: expected a percentile in [0, 100], got {self.quantile}")
        if self.probe_steps < 0:
            raise ConfigError(f"adam.probe_steps: expected a non-negative integer, got {self.probe_steps}")
        if self.fisher_batches < 1:
            raise ConfigError(f"adam.fisher_batches: expected a positive integer, got {self.fisher_batches}")


@dataclass(frozen=True)
class RickConfig:
    """RICK (Zhao et al. 2023, docs/methods.md): filter importance estimated during adaptation; the most important
    filters are preserved (frozen), the least important pruned (zeroed), the rest fine-tuned.

    Defaults are the reference's FFHQ -> Babies run (yunqing-me/RICK README, `train_dynamic_update_prune.py`).
    """

    freeze_quantile: float = 40.0  # percentile (0-100) of a pool's scores above which a filter is preserved (--fisher_quantile; 85 for AFHQ-Cat)
    prune_quantile: float = 0.1  # percentile at or below which a filter is pruned, for good (--prune_quantile; 0.075 for AFHQ-Cat)
    warmup_steps: int = 250  # steps that train only D's final layers, before the first estimate (--warmup_iter)
    fisher_every: int = 50  # steps between importance estimates (--fisher_freq)
    fisher_batches: int = 5  # batches of `batch` images behind each estimate, one gradient per image (--num_fisher_img)

    def __post_init__(self) -> None:
        for key in ("freeze_quantile", "prune_quantile"):
            value = getattr(self, key)
            if not 0.0 <= value <= 100.0:
                raise ConfigError(f"rick.{key}: expected a percentile in [0, 100], got {value}")
        if self.prune_quantile > self.freeze_quantile:
            raise ConfigError(f"rick.prune_quantile: {self.prune_quantile} is above rick.freeze_quantile={self.freeze_quantile}; it would prune filters it preserves")
        if self.warmup_steps < 0:
            raise ConfigError(f"rick.warmup_steps: expected a non-negative integer, got {self.warmup_steps}")
        if self.fisher_every < 1:
            raise ConfigError(f"rick.fisher_every: expected a positive integer, got {self.fisher_every}")
        if self.fisher_batches < 1:
            raise ConfigError(f"rick.fisher_batches: expected a positive integer, got {self.fisher_batches}")


@dataclass(frozen=True)
class AugmentConfig:
    """Adaptive differentiable augmentation of everything D sees (ADA, Karras et al. 2020), for any method.

    Off by default (SPEC §3: x-flips of the few shots only); the reference's own run script also trains CDC
    with it on (`--augment`). The `ada` baseline (TGAN + ADA) augments whatever `enabled` says.
    """

    enabled: bool = False
    target: float = 0.6  # target of E[sign(D(real))]
    interval: int = 4  # D steps between adjustments of p
    kimg: float = 10.0  # thousands of images for p to move by 1 (ADA uses 500 for runs a thousand times longer)

    def __post_init__(self) -> None:
        if not 0.0 <= self.target <= 1.0:
            raise ConfigError(f"augment.target: expected a value in [0, 1], got {self.target}")
        if self.interval < 1:
            raise ConfigError(f"augment.interval: expected a positive integer, got {self.interval}")
        if self.kimg <= 0:
            raise ConfigError(f"augment.kimg: expected a positive number, got {self.kimg}")


NOISE_STRENGTHS = ("learned", "frozen", "penalised")


@dataclass(frozen=True)
class NoiseConfig:
    """What adaptation does with G's noise-injection strengths (`noise.weight`, one scalar per styled conv).

    "learned" is the reference: trained like every other weight. With ten shots of high-frequency strokes the
    adversarial game raises them 3-100x and G draws grain instead of strokes (issue #20). "frozen" keeps the
    source's values in G_t and G_ema (AdAM's adaptation zeroes their gradients); "penalised" adds
    `weight * sum_l (s_l - s_source_l)^2` to the G loss, pulling G_t's toward the source's (the default: the lowest
    KID for CDC and TGAN on the toy benchmark, without grain). fsg_ray/adapt/noise.py applies it.
    """

    strength: str = "penalised"  # a deliberate change from the reference, measured in bench/RESULTS.md ("noise strengths")
    weight: float = 100.0  # penalised only: at 100 the pull outweighs the adversarial gradient (|g| ~0.2) once a strength is ~0.001 off

    def __post_init__(self) -> None:
        if self.strength not in NOISE_STRENGTHS:
            raise ConfigError(f"noise.strength: expected one of {', '.join(NOISE_STRENGTHS)}, got {self.strength!r}")
        if self.weight < 0:
            raise ConfigError(f"noise.weight: expected a non-negative weight, got {self.weight}")


@dataclass(frozen=True)
class AdaptConfig:
    method: str = "cdc"
    steps: int = 5000
    batch: int = 4
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 500
    keep_checkpoints: int | None = None
    cdc: CdcConfig = field(default_factory=CdcConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    rick: RickConfig = field(default_factory=RickConfig)

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch": self.batch, "checkpoint_every": self.checkpoint_every, "sample_every": self.sample_every}
        positive |= {"cdc.batch": self.cdc.batch, "anchors.count": self.anchors.count, "anchors.every": self.anchors.every}
        positive |= {"anchors.patch_levels": self.anchors.patch_levels, "optim.g_reg_every": self.optim.g_reg_every, "optim.d_reg_every": self.optim.d_reg_every}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {value}")
        if self.cdc.batch < 2:
            raise ConfigError(f"cdc.batch: the distance consistency needs at least 2 samples, got {self.cdc.batch}")
        if self.cdc.variant not in ("official", "paper"):
            raise ConfigError(f"cdc.variant: expected 'official' or 'paper', got {self.cdc.variant!r}")
        if not 0.0 <= self.optim.mixing <= 1.0:
            raise ConfigError(f"optim.mixing: expected a probability, got {self.optim.mixing}")
        if self.optim.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"optim.precision: expected 'fp32', 'bf16' or 'fp16', got {self.optim.precision!r}")

    @property
    def ema_decay(self) -> float:
        """The EMA decay of this run: `optim.ema_decay` when set, else the reference decay, shortened for runs
        under 3125 steps to a half-life of a tenth of the run so that G_ema is the adapted G, not the source."""
        if self.optim.ema_decay is not None:
            return self.optim.ema_decay
        return min(REFERENCE_EMA_DECAY, ema_decay_for_short_run(self.steps))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data -> {dotted.key: leaf value}, the keys `--set` takes."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a dataclass tree from nested plain data, rejecting unknown keys and ill-typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys: {', '.join(sorted(names))}")
    values = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, key + ".")
    if isinstance(hint, types.UnionType):
        if value is None and type(None) in hint.__args__:
            return None
        (hint,) = [a for a in hint.__args__ if a is not type(None)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (values parsed as YAML scalars) to nested plain data."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AdaptConfig:
    """Defaults, then the YAML file, then `--set` overrides; every key checked against the schema."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from exc
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(AdaptConfig, apply_overrides(data, overrides or []))
