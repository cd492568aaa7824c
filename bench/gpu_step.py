"""Adaptation step cost by kind of step: ms and peak memory of the CDC step, per precision and ops path.

One `Adaptation` (CDC at its defaults, batch 4) per variant, built from the same random source and
seed, runs `--warmup` steps and then `--steps` timed steps. Steps differ in cost: anchor steps use
the image-level D, the others a patch head; R1 runs every 16th step and path length every 4th, so
the table gives each kind's mean and the mean over the timed window (16 steps = one full cycle of
the lazy regularisers). Variants are `precision/impl`: precision fp32|bf16|fp16 (optim.precision),
impl ref (pure-PyTorch ops) or cuda (fused kernels) or auto. Peak memory is
torch.cuda.max_memory_allocated over the timed window on a GPU; on the CPU it is the process's peak
RSS so far (run one variant per process to compare variants there). The last columns compare each
variant's losses at the end of the window with the first variant's (same seeds, same draws). A
second table gives the peak of each phase (D, R1, G with CDC, path length) in the timed window: the
allocator's peak on a GPU, the process's RSS sampled every 10 ms on the CPU.

    python bench/gpu_step.py --device cuda                          # 256px cm=2, fp32/bf16/fp16, fused vs ref
    python bench/gpu_step.py --device cpu --warmup 2 --steps 4      # a quick CPU check (toy-64px)
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fsg_ray.adapt.anchors import is_anchor_iteration
from fsg_ray.adapt.loop import Adaptation, StepStats, new_adaptation
from fsg_ray.config import AdaptConfig, load_config
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets import ops
from fsg_ray.nets.checkpoints import FORMAT
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig

CONFIGS = {
    "toy-64px": ModelConfig(size=64, style_dim=64, n_mlp=4, channel_max=32),
    "256px-cm2": ModelConfig(size=256, channel_multiplier=2),
}
PHASES = {"d_step": "D", "r1_step": "R1", "g_step": "G + CDC", "path_length_step": "path length"}
DEFAULT_VARIANTS = {"cuda": "fp32/ref,fp32/cuda,bf16/ref,bf16/cuda,fp16/cuda", "cpu": "fp32/ref"}


@dataclass(frozen=True)
class Variant:
    precision: str
    impl: str

    @classmethod
    def parse(cls, name: str) -> Variant:
        precision, sep, impl = name.partition("/")
        if not sep or precision not in ("fp32", "bf16", "fp16") or impl not in ops.IMPLS:
            raise SystemExit(f"variant {name!r}: expected PRECISION/IMPL with PRECISION in fp32|bf16|fp16 and IMPL in {'|'.join(ops.IMPLS)}")
        return cls(precision, impl)

    @property
    def name(self) -> str:
        return f"{self.precision}/{self.impl}"


@dataclass
class Measured:
    variant: Variant
    ms_by_kind: dict[str, float]
    ms_mean: float
    peak_gib: float
    phase_peak_gib: dict[str, float]
    last: StepStats


def step_kind(step: int, config: AdaptConfig) -> str:
    parts = ["anchor" if is_anchor_iteration(step, config.anchors) else "patch"]
    if step % config.optim.d_reg_every == 0:
        parts.append("R1")
    if step % config.optim.g_reg_every == 0:
        parts.append("PL")
    return " + ".join(parts)


def random_source(model: ModelConfig) -> dict:
    """A seeded random G/D of the architecture: cost does not depend on the weights, and every
    variant starts from the same ones, so their losses can be compared."""
    torch.manual_seed(0)
    g, d = Generator(model), Discriminator(model)
    return {"format": FORMAT, "model": asdict(model), "uri": f"random {model}", "g": g.state_dict(), "g_ema": g.state_dict(), "d": d.state_dict()}


def build(source: dict, model: ModelConfig, variant: Variant, device: torch.device, batch: int) -> Adaptation:
    targets = torch.rand(10, 3, model.size, model.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = load_config(None, [f"batch={batch}", f"optim.precision={variant.precision}"])
    torch.manual_seed(0)  # the fresh patch heads
    return new_adaptation(source, FewShotImages(targets), config, device=device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib() -> float:
    """The process's peak resident set so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class PhasePeaks:
    """Peak memory in GiB of each phase of the step, recorded by wrapping the run's phase methods.

    CUDA: the caching allocator's peak of live tensors since the phase began. CPU: the process's
    resident set, sampled every 10 ms by a thread (torch releases the GIL while it computes), which
    also counts freed memory the C allocator has not returned yet.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peaks: dict[str, float] = {}
        self.recording = False
        self._sampled = 0
        self._stop = threading.Event()
        if device.type == "cpu":
            threading.Thread(target=self._sample, daemon=True).start()

    def wrap(self, run: Adaptation) -> None:
        for method in PHASES:
            setattr(run, method, self._measured(method, getattr(run, method)))

    def close(self) -> None:
        self._stop.set()

    def _measured(self, method: str, call: Callable[[], Any]) -> Callable[[], Any]:
        def measured() -> Any:
            if not self.recording:
                return call()
            self._begin()
            try:
                return call()
            finally:
                self.peaks[PHASES[method]] = max(self.peaks.get(PHASES[method], 0.0), self._end())

        return measured

    def _begin(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sampled = _rss_bytes()

    def _end(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return max(self._sampled, _rss_bytes()) / 2**30

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._sampled = max(self._sampled, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure(source: dict, model: ModelConfig, variant: Variant, device: torch.device, batch: int, warmup: int, steps: int) -> Measured:
    phases = PhasePeaks(device)
    with ops.impl_for_auto(variant.impl):
        run = build(source, model, variant, device, batch)
        phases.wrap(run)
        for _ in range(warmup):
            run.train_step()
        phases.recording = True
        times: dict[str, list[float]] = {}
        for _ in range(steps):
            kind = step_kind(run.step, run.config)
            synchronize(device)
            start = time.perf_counter()
            last = run.train_step()
            synchronize(device)
            times.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
    phases.close()
    all_ms = [ms for kind_ms in times.values() for ms in kind_ms]
    # On a GPU the phases reset the allocator's peak, so the window's peak is the largest phase's.
    peak = max(phases.peaks.values()) if device.type == "cuda" else peak_gib()
    return Measured(variant, {k: statistics.mean(v) for k, v in times.items()}, statistics.mean(all_ms), peak, phases.peaks, last)


def relative_gap(value: float, reference: float) -> str:
    return f"{abs(value - reference) / max(abs(reference), 1e-12):.1%}"


def row(m: Measured, kinds: list[str], batch: int, base: Measured | None) -> str:
    cells = [m.variant.name, *(f"{m.ms_by_kind[k]:.1f}" if k in m.ms_by_kind else "-" for k in kinds), f"{m.ms_mean:.1f}", f"{batch * 1000 / m.ms_mean:.3g}"]
    cells += [f"{base.ms_mean / m.ms_mean:.2f}" if base else "1.00", f"{m.peak_gib:.2f}"]
    cells += [f"{m.last.d_loss:.4g}", f"{m.last.g_loss:.4g}", f"{m.last.cdc_loss:.3g}"]
    if base is None:
        cells += ["-", "-"]
    else:
        cells += [relative_gap(m.last.d_loss, base.last.d_loss), relative_gap(m.last.g_loss, base.last.g_loss)]
    return "| " + " | ".join(cells) + " |"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: 256px-cm2 on a GPU, toy-64px on the CPU")
    parser.add_argument("--variants", help="comma-separated PRECISION/IMPL (default: GPU fp32/ref,fp32/cuda,bf16/ref,bf16/cuda,fp16/cuda; CPU fp32/ref)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=16, help="untimed steps first (cuDNN autotuning, the extension's build)")
    parser.add_argument("--steps", type=int, default=16, help="timed steps (16 = one cycle of R1 and path length)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [Variant.parse(v) for v in (args.variants or DEFAULT_VARIANTS[device.type]).split(",")]
    args.config = args.config or ("256px-cm2" if device.type == "cuda" else "toy-64px")
    model = CONFIGS[args.config]
    source = random_source(model)
    config = load_config(None, [])
    kinds = sorted({step_kind(s, config) for s in range(args.warmup, args.warmup + args.steps)}, key=lambda k: (-len(k), k))
    memory = "peak GiB allocated" if device.type == "cuda" else "peak RSS GiB (process)"
    print(f"\n{args.config}, batch {args.batch}, CDC defaults, on {device_name(device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print(f"ms per step by kind over steps {args.warmup}..{args.warmup + args.steps - 1} (after {args.warmup} warm-up steps); x = speed vs the first row; loss gaps vs the first row")
    print("| variant | " + " | ".join(f"{k} ms" for k in kinds) + f" | mean ms/step | images/s | x | {memory} | d | g | cdc | d gap | g gap |")
    print("|---|" + "---:|" * (len(kinds) + 9), flush=True)
    base = None
    done: list[Measured] = []
    for variant in variants:
        try:
            measured = measure(source, model, variant, device, args.batch, args.warmup, args.steps)
        except Exception as exc:  # an OOM or a failed build is a result of this variant, not the end of the table
            print(f"| {variant.name} | failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''} |", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        print(row(measured, kinds, args.batch, base), flush=True)
        base = base or measured
        done.append(measured)
    phases = [p for p in PHASES.values() if any(p in m.phase_peak_gib for m in done)]
    print(f"\npeak memory by phase, GiB ({'allocated' if device.type == 'cuda' else 'process RSS, sampled every 10 ms'})")
    print("| variant | " + " | ".join(phases) + " |")
    print("|---|" + "---:|" * len(phases))
    for m in done:
        print(f"| {m.variant.name} | " + " | ".join(f"{m.phase_peak_gib[p]:.2f}" if p in m.phase_peak_gib else "-" for p in phases) + " |", flush=True)


if __name__ == "__main__":
    main()
