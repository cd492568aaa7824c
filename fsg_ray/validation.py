"""In-loop validation of a checkpoint: the numbers a Tune trial reports with each checkpoint and ASHA compares.

It runs fsg eval's protocol (`fsg_ray.evaluate.evaluate`) on the checkpoint about to be reported, with
small sample counts, and reports every number under the extractor-qualified key that protocol uses
(`kid_offline` when the offline feature extractor did the work) plus the extractors' names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsg_ray.evaluate import EvalResult, EvalSettings, evaluate
from fsg_ray.metrics import build_extractor, build_lpips

LPIPS_METRICS = ("intra_lpips", "corr_lpips")
KID_SUBSET_SIZE = 1000  # clean-fid's; smaller validation sets use all their images per subset


def measure(checkpoint_uri: str, validation: str, source: str, metrics: tuple[str, ...], n: int, device: str) -> EvalResult:
    """The one call into the evaluation protocol: point it at another extractor here.

    Extractors are fsg eval's defaults on the machine that runs it (the offline ones when no pretrained
    weights are there); `reported_key` must agree with this choice.
    """
    settings = EvalSettings(n_generated=n, n_real=n, n_lpips=n, n_corr=n, kid_subset_size=min(n, KID_SUBSET_SIZE))
    return evaluate(checkpoint_uri, validation, source, list(metrics), settings, device=device)


def reported_key(name: str) -> str:
    """The key under which `measure` reports a searched metric on this machine: kid -> kid_offline, ..."""
    if name == "corr_l1":
        return name
    offline = build_lpips().offline if name in LPIPS_METRICS else build_extractor().offline
    return f"{name}_offline" if offline else name


@dataclass(frozen=True)
class Validation:
    """What a trial measures on each checkpoint: `n` samples of G_ema against `validation` (held-out images)."""

    validation: str
    source: str
    metrics: tuple[str, ...]
    n: int

    def __call__(self, checkpoint_uri: str, device: str = "cpu") -> dict[str, Any]:
        result = measure(checkpoint_uri, self.validation, self.source, self.metrics, self.n, device)
        extractors = {f"extractor_{what}": name for what, name in result.extractors.items()}
        return {**result.metrics, **extractors, "eval_s": result.elapsed_s}
