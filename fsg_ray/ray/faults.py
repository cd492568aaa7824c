"""Fault injection: kill one worker once, at a chosen step, to exercise recovery from checkpoints.

`FSG_FAULT_INJECT="step=K,rank=R"` makes rank R exit abruptly right after its K-th step. A marker
object under the run URI records that the fault fired, so the replay after the restart (and any
rerun of the same run) goes through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from fsg_ray import storage
from fsg_ray.adapt.loop import Adaptation

FAULT_ENV = "FSG_FAULT_INJECT"


@dataclass(frozen=True)
class Fault:
    step: int
    rank: int

    @classmethod
    def parse(cls, text: str) -> Fault:
        fields = dict(item.partition("=")[::2] for item in text.split(","))
        if set(fields) != {"step", "rank"} or not all(v.isdigit() for v in fields.values()):
            raise ValueError(f"{FAULT_ENV}: expected 'step=K,rank=R' with non-negative integers, got {text!r}")
        return cls(step=int(fields["step"]), rank=int(fields["rank"]))

    def marker(self, run_uri: str) -> str:
        return storage.join(run_uri, f"fault_injected_step{self.step}_rank{self.rank}")


def fault_hook(fault: Fault, run_uri: str, rank: int) -> Callable[[Adaptation], None]:
    """An `on_step` callback that kills this process once when the fault's step and rank come up."""

    def maybe_die(run: Adaptation) -> None:
        if run.step != fault.step or rank != fault.rank or storage.exists(fault.marker(run_uri)):
            return
        storage.write_bytes(fault.marker(run_uri), b"")
        print(f"fault injection: rank {rank} exits after step {run.step}", flush=True)
        os._exit(1)

    return maybe_die
