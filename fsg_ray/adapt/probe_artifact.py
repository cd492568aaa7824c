"""What makes an AdAM importance probe: the run's probe file is reused only for the source, shots and settings it was made from.

The probe (fsg_ray/adapt/probe.py) costs hundreds of training steps and a thousand backward passes, and
the kernels AdAM modulates follow from it, so it is computed once per run, stored as `RUN_URI/probe.pt`
and read back on resume and by every Ray Train worker. A probe of another source, another set of shots or
other probing settings would silently adapt different kernels: such a file is refused, naming the difference.
"""

from __future__ import annotations

import hashlib
from typing import Any

from torch import Tensor

from fsg_ray.config import AdaptConfig, config_to_dict, flatten
from fsg_ray.nets.checkpoints import CheckpointError

PROBE_FILE = "probe.pt"
PROBE_FORMAT = "fsg-ray-adam-probe/1"
# The config fields the probing run reads; the rest (steps, quantile, schedule) only shape the main adaptation.
PROBE_FIELDS = ("seed", "batch", "adam.probe_steps", "adam.fisher_batches", "optim.", "augment.")
NOT_PROBE_FIELDS = ("optim.ema_decay",)  # the probe averages with the reference's fixed decay


def probe_settings(config: AdaptConfig) -> dict[str, Any]:
    """The flattened config fields the probe depends on."""
    flat = flatten(config_to_dict(config))
    return {k: v for k, v in flat.items() if k.startswith(PROBE_FIELDS) and k not in NOT_PROBE_FIELDS}


def tensors_digest(tensors: dict[str, Any]) -> str:
    """sha256 over a (nested) dict of tensors, by sorted key: the identity of a source or of a set of shots."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        digest.update(key.encode())
        if isinstance(value, dict):
            digest.update(tensors_digest(value).encode())
        else:
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def source_digest(source: dict[str, Any]) -> str:
    return tensors_digest({k: source[k] for k in ("g", "g_ema", "d") if k in source})


def shots_digest(images: Tensor) -> str:
    return tensors_digest({"images": images})


def probe_identity(source: dict[str, Any], images: Tensor, config: AdaptConfig) -> dict[str, Any]:
    return {
        "format": PROBE_FORMAT,
        "source": source.get("uri", "source"),
        "source_sha256": source_digest(source),
        "shots_sha256": shots_digest(images),
        "settings": probe_settings(config),
    }


def check_probe(probe: dict[str, Any], source: dict[str, Any], images: Tensor, config: AdaptConfig, where: str = PROBE_FILE) -> None:
    """Refuses a probe made from another source, other shots or other probing settings, naming the difference."""
    if probe.get("format") != PROBE_FORMAT:
        raise CheckpointError(f"{where}: not an AdAM probe (format {probe.get('format')!r}, expected {PROBE_FORMAT!r})")
    digest = source_digest(source)
    if probe["source_sha256"] != digest:
        raise CheckpointError(
            f"{where}: made from another source ({probe['source']}, sha256 {probe['source_sha256'][:12]}); "
            f"this run's source {source.get('uri', 'source')} has sha256 {digest[:12]}"
        )
    if probe["shots_sha256"] != shots_digest(images):
        raise CheckpointError(f"{where}: made from other target images than this run's (sha256 {probe['shots_sha256'][:12]} vs {shots_digest(images)[:12]})")
    now = probe_settings(config)
    for key in sorted(set(now) | set(probe["settings"])):
        if probe["settings"].get(key) != now.get(key):
            raise CheckpointError(f"{where}: made with {key}={probe['settings'].get(key)!r}, this run has {key}={now.get(key)!r}")


def probe_digest(probe: dict[str, Any]) -> str:
    """Identity of a probe's result, kept in checkpoints so a resume can tell that it uses the same kernels."""
    return tensors_digest({"g": probe["fisher_g"], "d": probe["fisher_d"]})
