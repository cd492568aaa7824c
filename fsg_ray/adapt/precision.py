"""Mixed precision of the adaptation step: autocast for the adversarial phases, loss scaling for fp16.

`optim.precision` picks the dtype the networks' forward passes run in (fp32, bf16 or fp16 through
torch.autocast). Losses, the CDC similarity distributions and the optimizers stay in fp32, and the
lazy regularisers (R1, path length) run entirely in fp32: their double backward is where half
precision loses the most. fp16 scales each phase's loss (one GradScaler per optimizer) so small
gradients do not underflow; a step whose gradients overflow is skipped and the scale lowered.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """The autocast context and the loss scaling of one run, for networks on `device`."""

    def __init__(self, precision: str, device: torch.device):
        if precision not in DTYPES:
            raise ValueError(f"optim.precision: expected one of {sorted(DTYPES)}, got {precision!r}")
        self.precision = precision
        self.device_type = device.type
        self.scalers = {name: torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=precision == "fp16") for name in ("g", "d")}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Forward passes of G and D inside this block run in the run's precision."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.precision])

    def backward(self, phase: str, loss: Tensor) -> None:
        """Accumulate the gradients of `loss`, scaled by the loss scale of `phase` ("g"|"d") under fp16."""
        self.scalers[phase].scale(loss).backward()

    def step(self, phase: str, optim: torch.optim.Optimizer, sync: Any, params: list[nn.Parameter]) -> None:
        """`sync(params)` (gradient averaging), then the optimizer step of `phase`, skipped if its gradients overflowed.

        Ranks average the still-scaled gradients: they share one scale, and an overflow on any rank
        reaches all of them through the average, so all skip the same steps.
        """
        sync(params)
        self.scalers[phase].step(optim)
        self.scalers[phase].update()

    def state_dict(self) -> dict[str, Any]:
        return {name: scaler.state_dict() for name, scaler in self.scalers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state[name])
