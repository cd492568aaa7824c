"""G_ema without the source's share: what an intermediate checkpoint of a run is on its way to.

G_ema starts as the source's weights and follows G_t with decay d, so after k steps it is
d^k · source + (1 - d) · Σ_j d^(k-1-j) · G_j. Early in a run d^k is large: a 300-step run's EMA
(half-life 30 steps) is still 31 % source at step 50, so a search rung that measures G_ema there
measures mostly the source, which every trial shares, and ranks trials by little else than how fast
they move. Subtracting that share and renormalising (Adam's bias correction of its moment estimates)
leaves the EMA of the G_t trajectory so far. At the run's last step nothing is removed: the final
number is that of the G_ema the run exports.
"""

from __future__ import annotations

from typing import Any

import torch

from fsg_ray.nets.checkpoints import build_generator, read_checkpoint
from fsg_ray.nets.stylegan2 import Generator


def source_share(ckpt: dict[str, Any]) -> float:
    """How much of a run checkpoint's G_ema is still the source's G_ema: d^step (0 for a checkpoint of no run)."""
    if "ema_decay" not in ckpt or "step" not in ckpt:
        return 0.0
    return float(ckpt["ema_decay"]) ** int(ckpt["step"])


def is_intermediate(ckpt: dict[str, Any]) -> bool:
    """A checkpoint written before its run's last step (a search rung), not the run's end."""
    steps = ckpt.get("config", {}).get("steps")
    return steps is not None and "step" in ckpt and int(ckpt["step"]) < int(steps)


@torch.no_grad()
def remove_source_share(g_ema: Generator, source_ema: Generator, share: float) -> None:
    """In place: (G_ema - share · source) / (1 - share), over the parameters G_ema averages (buffers never move)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share: expected a value in [0, 1), got {share}")
    for p, p0 in zip(g_ema.parameters(), source_ema.parameters(), strict=True):
        p.sub_(p0, alpha=share).div_(1.0 - share)


def rung_state(ckpt: dict[str, Any], source_uri: str) -> dict[str, Any]:
    """`ckpt` with an intermediate checkpoint's G_ema freed of the source's share (SOURCE_URI's G_ema, where the
    run's G_ema started); the run's final checkpoint, or one with no share left, unchanged."""
    share = source_share(ckpt)
    if not is_intermediate(ckpt) or share == 0.0:
        return ckpt
    source = read_checkpoint(source_uri)
    g_ema = build_generator(ckpt)
    remove_source_share(g_ema, build_generator(source, "g_ema" if "g_ema" in source else "g"), share)
    return {**ckpt, "g_ema": g_ema.state_dict()}
