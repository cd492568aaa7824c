"""Generator throughput: images/s of `Generator(z, noise="const")` at the toy config and at 256px cm=2.

Prints one table per (config, device): images/s for each batch size and variant, and the ratio of
each variant against plain fp32 at the same batch size, measured in this process. Variants beyond
fp32 are the usual speed levers: channels_last memory format, bf16 autocast, torch.compile.

    python bench/gen_forward.py                 # CPU (and CUDA when present), batches 1..64
    python bench/gen_forward.py --quick         # a smaller sweep
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fsg_ray.nets.stylegan2 import Generator, ModelConfig

CONFIGS = {
    "toy-64px": ModelConfig(size=64, style_dim=64, n_mlp=4, channel_max=32),
    "256px-cm2": ModelConfig(size=256, channel_multiplier=2),
}


@dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


VARIANTS = [Variant("fp32"), Variant("channels_last", channels_last=True), Variant("bf16", bf16=True), Variant("compile", compile=True)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
        yield


def build(config: ModelConfig, variant: Variant, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    g = Generator(config).to(device).eval().requires_grad_(False)
    if variant.channels_last:
        # Only 4-D tensors have a channels_last layout; the modulated convs' 5-D weights stay as they are.
        for tensor in [*g.parameters(), *g.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(g) if variant.compile else g

    def run(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, variant.bf16):
            return forward(z, noise="const")

    return run


def images_per_s(run: Callable[[torch.Tensor], torch.Tensor], batch: int, style_dim: int, device: torch.device, min_time: float) -> float:
    """Median over repeats after warm-up; repeats until `min_time` seconds have been measured.

    A forward slower than `min_time` (256 px on a CPU takes seconds) is measured once after one
    warm-up call, so the sweep stays within minutes.
    """
    z = torch.randn(batch, style_dim, device=device)
    start = time.perf_counter()
    run(z)
    synchronize(device)
    if time.perf_counter() - start < min_time:
        for _ in range(2):
            run(z)
        synchronize(device)
    times: list[float] = []
    while sum(times) < min_time or (len(times) < 3 and sum(times) < 3 * min_time):
        start = time.perf_counter()
        run(z)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench(name: str, config: ModelConfig, device: torch.device, batches: list[int], variants: list[Variant], min_time: float) -> None:
    results: dict[tuple[str, int], float] = {}
    for variant in variants:
        try:
            run = build(config, variant, device)
            for batch in batches:
                results[variant.name, batch] = images_per_s(run, batch, config.style_dim, device, min_time)
        except Exception as exc:  # a variant the platform cannot run is reported, not fatal
            print(f"  {variant.name}: not available on {device} ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
    print(f"\n{name} on {device_name(device)}: images/s (x ratio vs fp32 at the same batch)")
    print("| batch | " + " | ".join(v.name for v in variants) + " |")
    print("|---:|" + "---:|" * len(variants))
    for batch in batches:
        base = results.get(("fp32", batch))
        cells = []
        for v in variants:
            value = results.get((v.name, batch))
            cells.append("n/a" if value is None else f"{value:.3g}" + ("" if base is None or v.name == "fp32" else f" (x{value / base:.2f})"))
        print(f"| {batch} | " + " | ".join(cells) + " |")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches 1,8 and no torch.compile")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds measured per cell")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,4,16,64; --quick: 1,8)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 8] if args.quick else [1, 4, 16, 64]
    wanted = set(args.variants.split(",")) - ({"compile"} if args.quick else set())
    variants = [v for v in VARIANTS if v.name in wanted]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    for device in devices:
        for name in args.configs.split(","):
            bench(name, CONFIGS[name], device, batches, variants, args.min_time)


if __name__ == "__main__":
    main()
