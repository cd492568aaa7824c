"""What one evaluation asks for and what it found: EvalSettings, EvalResult, EvalError (imported by the protocol and the report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FEATURES = ("inception", "offline")


class EvalError(ValueError):
    """An evaluation request that cannot be carried out as asked; the message names the bad value."""


@dataclass(frozen=True)
class EvalSettings:
    """How many images each metric uses, and the seed; stored with the numbers so they can be reproduced."""

    n_generated: int = 5000  # FID/KID samples (SPEC §4: >= 5000; FID needs > 2048 with Inception)
    n_real: int = 5000  # held-out images of a toy:NAME target; a folder/zip/Parquet target is used whole
    n_lpips: int = 1000  # intra-cluster LPIPS samples (SPEC §4)
    max_per_cluster: int = 50
    n_corr: int = 256  # samples for corr and corr_ratio
    seed: int = 0
    truncation: float = 1.0
    batch_size: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    features: str = "inception"  # FID/KID features: "inception" (the standard numbers) or "offline" (fast, labelled)
    bootstrap_rounds: int = 1000  # rounds of the bootstrap behind every interval (metrics/intervals.py)
    interval_level: float = 0.95

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise EvalError(f"features: expected one of {', '.join(FEATURES)}, got {self.features!r}")
        for key in ("n_generated", "n_real", "n_lpips", "max_per_cluster", "n_corr", "batch_size", "kid_subsets", "kid_subset_size", "bootstrap_rounds"):
            if getattr(self, key) < 1:
                raise EvalError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        if self.n_generated < 2 or self.n_real < 2:
            raise EvalError(f"n_generated and n_real: KID needs at least 2 images each, got {self.n_generated} and {self.n_real}")
        if not 0 < self.interval_level < 1:
            raise EvalError(f"interval_level: expected a probability strictly between 0 and 1, got {self.interval_level}")
        if self.n_corr < 2:
            raise EvalError(f"n_corr: corr_ratio pairs each sample with another one, so at least 2 are needed, got {self.n_corr}")


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` found: metric values keyed by extractor-qualified names, and why others are absent."""

    generator: str
    target: str
    source: str | None
    train: str | None  # the few-shot images intra-LPIPS clusters around
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # metric key -> bootstrap interval at settings.interval_level (not every key has one)
    not_defined: dict[str, str]
    extractors: dict[str, str]  # "features" (FID/KID), "stlpips" and "lpips" -> the model names used
    settings: EvalSettings
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def offline(self) -> list[str]:
        """Names of the offline (not comparable with published numbers) extractors that were used."""
        return [name for name in self.extractors.values() if name.startswith("offline:")]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "offline_extractors": self.offline}
