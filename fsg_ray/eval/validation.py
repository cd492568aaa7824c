"""In-loop validation of a checkpoint: the numbers a Tune trial reports with each checkpoint and ASHA compares.

It runs fsg eval's protocol (`fsg_ray.eval.protocol.evaluate`) on the checkpoint about to be reported, with
small sample counts, and reports every number under the extractor-qualified key that protocol uses
(`kid_offline` when the offline feature extractor did the work), its bootstrap interval as
`<key>_low` / `<key>_high`, plus the extractors' names. A checkpoint before its run's last step is measured
as a rung (`evaluate(rung=True)`): its G_ema without the share of the source it started from, which early
in a run is most of it (adapt/ema.py; bench/RESULTS.md, "tune", for what that changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsg_ray.eval.protocol import evaluate
from fsg_ray.eval.results import EvalResult, EvalSettings

KID_SUBSET_SIZE = 1000  # clean-fid's; smaller validation sets use all their images per subset


def measure(checkpoint_uri: str, validation: str, source: str, metrics: tuple[str, ...], n: int, features: str, device: str, rung: bool = True) -> EvalResult:
    """The one call into the evaluation protocol (`reported_key` names what it reports); `rung=False` measures
    the stored G_ema of an intermediate checkpoint as it is (bench/tune.py's comparison)."""
    settings = EvalSettings(n_generated=n, n_real=n, n_lpips=n, n_corr=n, kid_subset_size=min(n, KID_SUBSET_SIZE), features=features)
    return evaluate(checkpoint_uri, validation, source, list(metrics), settings, device=device, rung=rung)


def reported_key(name: str, features: str) -> str:
    """The key under which `measure` reports a searched metric: fid/kid (and their gaps) from the offline extractor carry _offline."""
    return f"{name}_offline" if name in ("fid", "kid", "gap_fid", "gap_kid") and features == "offline" else name


@dataclass(frozen=True)
class Validation:
    """What a trial measures on each checkpoint: `n` samples of G_ema against `validation` (held-out images)."""

    validation: str
    source: str
    metrics: tuple[str, ...]
    n: int
    features: str

    def __call__(self, checkpoint_uri: str, device: str = "cpu") -> dict[str, Any]:
        result = measure(checkpoint_uri, self.validation, self.source, self.metrics, self.n, self.features, device)
        extractors = {f"extractor_{what}": name for what, name in result.extractors.items()}
        bounds = {f"{key}_{end}": value for key, interval in result.intervals.items() for end, value in zip(("low", "high"), interval, strict=True)}
        return {**result.metrics, **bounds, **extractors, "eval_s": result.elapsed_s}
