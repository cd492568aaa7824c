"""`Distributed` over a torch.distributed process group: the gradient averaging of data-parallel GANs.

The StyleGAN2-ADA way instead of DDP wrappers: every rank computes its own gradients, then one
all-reduce of all of a phase's gradients flattened into a single tensor averages them before the
optimizer step. D and G phases toggle `requires_grad`, and a phase leaves some parameters unused
(the patch heads on anchor iterations); DDP would need `find_unused_parameters` and would reduce D's
gradients during the G step for nothing. No Ray here: the same class runs under any launcher.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class OutOfSync(RuntimeError):
    """Ranks hold different weights: averaged gradients would then train a different model on each."""


class ProcessGroup:
    """Averages gradients and scalars over the default process group (which must be initialised)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # NCCL reduces only CUDA tensors, gloo any: scalars go where the backend can take them.
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        self._checked: set[tuple[int, ...]] = set()

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        key = tuple(id(p) for p in params)
        if key not in self._checked:
            self._check_identical(params)
            self._checked.add(key)
        # Parameters that have never had a gradient have none on any rank (the phase schedule is shared),
        # and Adam must keep skipping them until their first one, so they are left out.
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad or self.world_size == 1:
            return
        flat = torch.cat([p.grad.flatten() for p in with_grad])
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, averaged in zip(with_grad, flat.split([p.numel() for p in with_grad])):
            p.grad.copy_(averaged.view_as(p.grad))

    def mean(self, value: float) -> float:
        return self.total(torch.tensor([value], dtype=torch.float64)).item() / self.world_size

    def total(self, values: Tensor) -> Tensor:
        summed = values.to(self.device, copy=True)
        dist.all_reduce(summed)
        return summed.cpu()

    def _check_identical(self, params: list[nn.Parameter]) -> None:
        """Once per parameter group: every rank must start from bit-identical weights."""
        flat = torch.cat([p.detach().flatten() for p in params])
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        differ = (high != low).nonzero()
        if len(differ):
            offsets = torch.tensor([p.numel() for p in params]).cumsum(0)
            first = int(torch.searchsorted(offsets, int(differ[0, 0]), right=True))
            raise OutOfSync(f"rank {self.rank}: {len(differ)} of {flat.numel()} weights differ across ranks, first in parameter #{first} of shape {list(params[first].shape)}")
