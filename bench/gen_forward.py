"""Generator throughput: images/s of `Generator(z, noise="const")` at the toy config and at 256px cm=2.

Prints one table per (config, device), a row per variant and batch size as it is measured: images/s
and the ratio against plain fp32 at the same batch size, measured in this process. Variants beyond
fp32 are the usual speed levers, combined with "+": bf16 or fp16 autocast, channels_last memory
format, torch.compile, and `ref` (pure-PyTorch ops instead of the fused CUDA kernels "auto" picks).
On a GPU each row also gives the utilisation of the card's dense bf16 peak (FLOPs of one image
counted by torch's FlopCounterMode, 2 per multiply-add, times images/s) and the peak memory allocated.

    python bench/gen_forward.py                 # CPU (and CUDA when present), batches 1..64
    python bench/gen_forward.py --quick         # a smaller sweep
    python bench/gen_forward.py --device cuda --configs 256px-cm2 --batches 1,2,4,8,16,32,64 \
        --variants fp32,fp32+ref,bf16,fp16,bf16+channels_last,bf16+channels_last+compile --compile-batches 8,64
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
from torch.utils.flop_counter import FlopCounterMode

from fsg_ray.nets import ops
from fsg_ray.nets.stylegan2 import Generator, ModelConfig

CONFIGS = {
    "toy-64px": ModelConfig(size=64, style_dim=64, n_mlp=4, channel_max=32),
    "256px-cm2": ModelConfig(size=256, channel_multiplier=2),
}


# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first name found
# in torch.cuda.get_device_name() wins, so the specific variants come before the plain chip names.
DENSE_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    "H200 NVL": 835.0,
    "H200": 989.0,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODIFIERS = ("channels_last", "compile", "ref")


@dataclass(frozen=True)
class Variant:
    """`fp32`, `bf16` or `fp16` (autocast), plus any of `+channels_last`, `+compile`, `+ref`.

    A name of modifiers only (`channels_last`, `compile`) means fp32 with them, as before.
    """

    name: str
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    ref_ops: bool = False

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("+")
        dtype = parts.pop(0) if parts[0] in DTYPES else "fp32"
        unknown = [p for p in parts if p not in MODIFIERS]
        if unknown or len(set(parts)) != len(parts):
            raise SystemExit(f"variant {name!r}: expected fp32|bf16|fp16 followed by +{'|+'.join(MODIFIERS)}, each once")
        return cls(name, dtype, "channels_last" in parts, "compile" in parts, "ref" in parts)


VARIANTS = [Variant.parse(name) for name in ("fp32", "channels_last", "bf16", "compile")]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: str) -> Iterator[None]:
    with torch.autocast(device.type, dtype=DTYPES[dtype] or torch.bfloat16, enabled=dtype != "fp32"):
        yield


def flops_per_image(config: ModelConfig) -> float:
    """FLOPs of one image's forward, counted on the meta device (nothing is computed)."""
    with torch.device("meta"):
        g = Generator(config)
        z = torch.randn(2, config.style_dim)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        g(z, noise="const")
    return counter.get_total_flops() / 2


def dense_bf16_tflops(device_name: str) -> float | None:
    """The datasheet peak of the card `torch.cuda.get_device_name()` names, None for a card not in the table."""
    return next((peak for chip, peak in DENSE_BF16_TFLOPS.items() if chip in device_name), None)


def build(config: ModelConfig, variant: Variant, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    g = Generator(config).to(device).eval().requires_grad_(False)
    if variant.channels_last:
        # Only 4-D tensors have a channels_last layout; the modulated convs' 5-D weights stay as they are.
        for tensor in [*g.parameters(), *g.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(g) if variant.compile else g

    def run(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, variant.dtype), ops.impl_for_auto("ref" if variant.ref_ops else "auto"):
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


def bench(name: str, config: ModelConfig, device: torch.device, batches: list[int], variants: list[Variant], min_time: float, compile_batches: list[int] | None) -> None:
    """One row per (variant, batch), printed as measured: images/s, ratio vs fp32, utilisation and
    peak memory (GPU only).

    torch.compile specialises on the batch size (tens of seconds per size), so compiled variants
    run only at `compile_batches` when given.
    """
    flops = flops_per_image(config)
    peak = dense_bf16_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak_text = f"{peak:.0f} TFLOP/s dense bf16 (datasheet)" if peak else "no known bf16 peak for this device (utilisation n/a)"
    print(f"\n{name} on {device_name(device)}: {flops / 1e9:.3g} GFLOP per image; {peak_text}")
    print("| variant | batch | images/s | x vs fp32 | utilisation % | peak memory GiB |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    fp32: dict[int, float] = {}
    for variant in variants:
        try:
            run = build(config, variant, device)
        except Exception as exc:  # a variant the platform cannot build is reported, not fatal
            print(f"| {variant.name} | - | failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]} | | | |", flush=True)
            continue
        for batch in batches:
            if variant.compile and compile_batches and batch not in compile_batches:
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                rate = images_per_s(run, batch, config.style_dim, device, min_time)
            except Exception as exc:  # an OOM at a large batch ends this variant's sweep, not the table
                print(f"| {variant.name} | {batch} | failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]} | | | |", flush=True)
                break
            if variant.name == "fp32":
                fp32[batch] = rate
            ratio = f"{rate / fp32[batch]:.2f}" if batch in fp32 else "-"
            utilisation = f"{100 * rate * flops / (peak * 1e12):.1f}" if peak else "n/a"
            memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "n/a"
            print(f"| {variant.name} | {batch} | {rate:.3g} | {ratio} | {utilisation} | {memory} |", flush=True)


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
    parser.add_argument("--device", choices=("cpu", "cuda"), help="one device (default: the CPU, and CUDA when present)")
    parser.add_argument("--compile-batches", help="comma-separated batch sizes at which compiled variants run (GPU; default all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 8] if args.quick else [1, 4, 16, 64]
    variants = [Variant.parse(name) for name in args.variants.split(",")]
    if args.quick:
        variants = [v for v in variants if not v.compile]
    compile_batches = [int(b) for b in args.compile_batches.split(",")] if args.compile_batches else None
    if args.device:
        devices = [torch.device(args.device)]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    for device in devices:
        for name in args.configs.split(","):
            bench(name, CONFIGS[name], device, batches, variants, args.min_time, compile_batches)


if __name__ == "__main__":
    main()
