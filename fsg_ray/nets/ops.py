"""StyleGAN2's two special ops, FIR resampling and bias + leaky-ReLU, in plain PyTorch.

These are the reference definitions: they run on CPU and GPU alike and never need a compiler.
Each op takes `impl`: "ref" runs the reference; "cuda" runs the fused kernel of `cuda_ops.py`
(CUDA tensors only; it is compiled with ninja on first use); "auto" runs the fused kernel only on
CUDA tensors, only if it built, and only for the ops a one-time timing on that device found faster
than the reference (`_fused_ops_faster`); `impl_for_auto` makes "auto" mean one path for a while
(benchmarks and whole-network parity checks). Which path is in use is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg_ray.nets import cuda_ops

logger = logging.getLogger(__name__)

IMPLS = ("auto", "cuda", "ref")
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def bias_leaky_relu(
    x: Tensor, bias: Tensor, slope: float = LEAKY_SLOPE, gain: float = ACTIVATION_GAIN, impl: str = "auto"
) -> Tensor:
    """Add a per-channel bias (channel dim 1), leaky-ReLU, then scale so the output variance is kept.

    The bias takes x's dtype: under autocast an fp32 bias would otherwise promote every bf16/fp16
    activation back to fp32.
    """
    bias = bias.to(x.dtype)
    unsupported = None
    if gain <= 0:
        unsupported = f"gain {gain} (the kernel reads the activation mask off the output's sign)"
    if _use_fused("bias_leaky_relu", x, impl, unsupported):
        return cuda_ops.bias_leaky_relu(x, bias, slope, gain)
    shape = (1, bias.shape[0]) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope=slope) * gain


def upfirdn2d(
    x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0), impl: str = "auto"
) -> Tensor:
    """Upsample by zero insertion, pad, filter with `kernel`, then keep every `down`-th pixel.

    Same padding convention as the StyleGAN2 papers' op: `pad = (before, after)` applied to both
    axes of the zero-inserted image; negative padding crops.
    """
    unsupported = "a kernel that requires grad" if kernel.requires_grad else None
    if _use_fused("upfirdn2d", x, impl, unsupported):
        return cuda_ops.upfirdn2d(x, kernel, up, down, pad)
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(batch, channels, height * up, width * up)
    before, after = pad
    x = F.pad(x, (max(before, 0), max(after, 0), max(before, 0), max(after, 0)))
    if before < 0 or after < 0:
        h, w = x.shape[2:]
        x = x[:, :, max(-before, 0) : h - max(-after, 0), max(-before, 0) : w - max(-after, 0)]
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)


_auto_means: str | None = None


@contextlib.contextmanager
def impl_for_auto(impl: str) -> Iterator[None]:
    """Within this block, op calls that ask for "auto" run `impl` ("cuda" or "ref") instead."""
    global _auto_means
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    previous, _auto_means = _auto_means, impl
    try:
        yield
    finally:
        _auto_means = previous


def _use_fused(op: str, x: Tensor, impl: str, unsupported: str | None) -> bool:
    """Whether `op` runs its fused kernel; `unsupported` says why these arguments cannot, if so."""
    if impl == "auto" and _auto_means is not None:
        impl = _auto_means
    if impl == "ref":
        return False
    if impl == "cuda":
        if not x.is_cuda:
            raise ValueError(f"{op}(impl='cuda') needs CUDA tensors, got one on {x.device}")
        if unsupported is not None:
            raise ValueError(f"{op}(impl='cuda') does not support {unsupported}")
        cuda_ops.load_extension()  # raises FusedOpsUnavailable with the build error
        _log_once(logging.INFO, "fsg_ray.ops: using fused CUDA ops (impl='cuda')")
        return True
    if impl != "auto":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not x.is_cuda:
        _log_once(logging.INFO, "fsg_ray.ops: using reference PyTorch ops (inputs are not on a CUDA device)")
        return False
    return unsupported is None and op in _fused_ops_faster(x.device)


_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


@functools.cache
def _fused_ops_faster(device: torch.device) -> frozenset[str]:
    """Names of the ops whose fused kernel beat the reference on `device`, timed once per process.

    Builds the extension (minutes, once; cached on disk by torch) and times forward + backward of
    each op on one mid-sized layer of the 256px generator. The session that wrote this had no GPU:
    neither the kernels' speed nor which ops this check picks has been measured yet.
    """
    try:
        cuda_ops.load_extension()
    except cuda_ops.FusedOpsUnavailable:
        reason = f"fused CUDA ops failed to build: {cuda_ops.build_error_summary()}"
        logger.warning("fsg_ray.ops: using reference PyTorch ops (%s)", reason)
        return frozenset()
    try:
        # The first call may come from inference code; the timing itself needs autograd.
        with torch.inference_mode(False), torch.enable_grad(), torch.cuda.device(device):
            timings = {op: (_time_ms(run, "cuda"), _time_ms(run, "ref")) for op, run in _timing_cases(device).items()}
    except RuntimeError as error:  # e.g. "no kernel image is available": built for another arch
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        logger.warning("fsg_ray.ops: using reference PyTorch ops (fused CUDA ops failed on %s: %s)", device, first_line)
        return frozenset()
    faster = frozenset(op for op, (fused, ref) in timings.items() if fused < ref)
    detail = ", ".join(f"{op} {fused:.3f} vs {ref:.3f} ms" for op, (fused, ref) in timings.items())
    if faster == set(timings):
        logger.info("fsg_ray.ops: using fused CUDA ops (fused vs reference: %s)", detail)
    elif not faster:
        logger.info("fsg_ray.ops: using reference PyTorch ops (fused CUDA ops measured slower: %s)", detail)
    else:
        slower = sorted(set(timings) - faster)
        logger.info(
            "fsg_ray.ops: using fused CUDA ops for %s, reference PyTorch ops for %s (fused vs reference: %s)",
            ", ".join(sorted(faster)),
            ", ".join(slower),
            detail,
        )
    return faster


def _timing_cases(device: torch.device) -> dict[str, Callable[[str], Tensor]]:
    """One representative generator-sized call per op at batch 8: bias + activation of a 512-channel
    32x32 map, and the blur (pad 1, 4x4 taps) of a 256-channel 65x65 stride-2 transposed-conv output."""
    x = torch.randn(8, 512, 32, 32, device=device, requires_grad=True)
    bias = torch.randn(512, device=device, requires_grad=True)
    image = torch.randn(8, 256, 65, 65, device=device, requires_grad=True)
    kernel = make_kernel([1, 3, 3, 1]).to(device) * 4
    return {
        "bias_leaky_relu": lambda impl: bias_leaky_relu(x, bias, impl=impl),
        "upfirdn2d": lambda impl: upfirdn2d(image, kernel, pad=(1, 1), impl=impl),
    }


def _time_ms(run: Callable[[str], Tensor], impl: str, repeats: int = 10) -> float:
    """Mean milliseconds of forward + backward of `run(impl)` on the current device, after warm-up
    (which also lets cuDNN pick its algorithm for the reference)."""
    for _ in range(3):
        run(impl).sum().backward()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run(impl).sum().backward()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats
