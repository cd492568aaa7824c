"""StyleGAN2's two special ops, FIR resampling and bias + leaky-ReLU, in plain PyTorch.

These are the reference definitions: they run on CPU and GPU alike and never need a compiler.
Each op takes `impl`: "ref" runs the reference; "cuda" runs the fused kernel of `cuda_ops.py`
(CUDA tensors only; it is compiled with ninja on first use); "auto" runs the fused kernel on CUDA
tensors when it builds and runs there (`_fused_ops_work`, the same answer in every process of one
environment), else the reference; `impl_for_auto` makes "auto" mean one path for a while
(benchmarks and whole-network parity checks). Which path is in use is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Sequence

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
    return unsupported is None and _fused_ops_work(x.device)


_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


@functools.cache
def _fused_ops_work(device: torch.device) -> bool:
    """Whether the fused kernels built and run on `device`; decided once per process.

    Deliberately not a timing: every process must choose the same path, or a synthesis worker and the
    endpoint would render other bits than `fsg sample` for the same seed. bench/gpu_step.py and
    bench/gen_forward.py compare the two paths' speed.
    """
    try:
        cuda_ops.load_extension()
    except cuda_ops.FusedOpsUnavailable:
        logger.warning("fsg_ray.ops: using reference PyTorch ops (fused CUDA ops failed to build: %s)", cuda_ops.build_error_summary())
        return False
    try:
        # The first call may come from inference code; the check runs each kernel forward and backward.
        with torch.inference_mode(False), torch.enable_grad(), torch.cuda.device(device):
            x = torch.randn(1, 4, 8, 8, device=device, requires_grad=True)
            bias = torch.zeros(4, device=device, requires_grad=True)
            out = upfirdn2d(bias_leaky_relu(x, bias, impl="cuda"), make_kernel([1, 3, 3, 1]).to(device), pad=(1, 1), impl="cuda")
            out.sum().backward()
            torch.cuda.synchronize(device)
    except RuntimeError as error:  # e.g. "no kernel image is available": built for another arch
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        logger.warning("fsg_ray.ops: using reference PyTorch ops (fused CUDA ops failed on %s: %s)", device, first_line)
        return False
    logger.info("fsg_ray.ops: using fused CUDA ops on %s", device)
    return True
