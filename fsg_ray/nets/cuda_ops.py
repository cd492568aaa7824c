"""Optional fused CUDA kernels for ops.py, compiled with ninja on first use and never at import.

ops.py decides when to use them; this module only builds the extension (once per process) and
wraps its kernels in autograd Functions whose backward passes are themselves differentiable, as
R1 and path-length regularization need.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE_DIR = Path(__file__).parent / "cuda"
SOURCES = ("bindings.cpp", "fused_act.cu", "upfirdn2d.cu")

_extension: ModuleType | None = None
_build_error: str | None = None


class FusedOpsUnavailable(RuntimeError):
    """The CUDA extension could not be built or loaded; the message says why."""


def load_extension() -> ModuleType:
    """Build (first call) or return the compiled extension; a failed build is not retried."""
    global _extension, _build_error
    if _extension is None and _build_error is None:
        try:
            # Imported here: cpp_extension pulls in setuptools, which only a build needs.
            from torch.utils.cpp_extension import load

            _extension = load(name="fsg_ray_ops", sources=[str(SOURCE_DIR / name) for name in SOURCES])
        except Exception as error:  # noqa: BLE001 - no nvcc, a compiler error, an unloadable .so: all fall back
            _build_error = f"{type(error).__name__}: {error}"
    if _extension is None:
        raise FusedOpsUnavailable(f"fused CUDA ops failed to build: {_build_error}")
    return _extension


def build_error_summary() -> str | None:
    """One line for the log: the first compiler or linker diagnostic of a failed build, else its first line."""
    if _build_error is None:
        return None
    lines = [line.strip() for line in _build_error.splitlines() if line.strip()]
    diagnostic = next((line for line in lines if re.search(r"\berror:|cannot find", line, re.IGNORECASE)), lines[0])
    return diagnostic[:300]


def bias_leaky_relu(x: Tensor, bias: Tensor, slope: float, gain: float) -> Tensor:
    """Fused ops.bias_leaky_relu for CUDA tensors of one dtype; needs gain > 0."""
    return _BiasLeakyReLU.apply(x, bias, slope, gain)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int, down: int, pad: tuple[int, int]) -> Tensor:
    """Fused ops.upfirdn2d for a CUDA tensor; no gradient flows to `kernel`."""
    before, after = pad
    return _UpFirDn2d.apply(x, kernel.to(x.dtype), up, down, (before, after, before, after))


def upfirdn2d_grad_pad(
    in_size: int, out_size: int, kernel_size: int, up: int, down: int, pad_before: int
) -> tuple[int, int]:
    """Padding of one axis for the input gradient of upfirdn2d, computed as
    `upfirdn2d(grad, flipped kernel, up=down, down=up, pad=<this>)`.

    The adjoint reads the gradient, zero-inserted by `down`, at the transposed offsets; the end pad
    makes its output exactly `in_size` long (it is cropped if negative).
    """
    return kernel_size - 1 - pad_before, in_size * up - out_size * down + pad_before


class _BiasLeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, slope: float, gain: float) -> Tensor:
        out = load_extension().bias_leaky_relu(x, bias, x.new_empty(0), slope, gain)
        ctx.save_for_backward(out)  # its sign is the activation mask; keeping it costs no memory
        ctx.slope, ctx.gain = slope, gain
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        (out,) = ctx.saved_tensors
        grad_x = _LeakyReLUGrad.apply(grad_out, out, ctx.slope, ctx.gain)
        grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_bias = grad_x.sum(dim=[d for d in range(grad_x.ndim) if d != 1])
        return grad_x, grad_bias, None, None


class _LeakyReLUGrad(torch.autograd.Function):
    """grad_out * (gain or slope * gain, by the sign of `out`): linear in grad_out, so its own
    backward is the same op, and the mask is piecewise constant, so `out` gets no gradient."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, out: Tensor, slope: float, gain: float) -> Tensor:
        ctx.save_for_backward(out)
        ctx.slope, ctx.gain = slope, gain
        return load_extension().bias_leaky_relu(grad_out, grad_out.new_empty(0), out, slope, gain)

    @staticmethod
    def backward(ctx, grad_grad: Tensor) -> tuple[Tensor, None, None, None]:
        (out,) = ctx.saved_tensors
        return _LeakyReLUGrad.apply(grad_grad, out, ctx.slope, ctx.gain), None, None, None


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d is linear in x; its adjoint is upfirdn2d with the flipped kernel and up/down
    swapped, applied through this same Function so every order of derivative is available."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, up: int, down: int, pad: tuple[int, int, int, int]) -> Tensor:
        out = load_extension().upfirdn2d(x, kernel, up, down, *pad)
        ctx.save_for_backward(kernel)
        ctx.up, ctx.down, ctx.pad, ctx.in_hw = up, down, pad, x.shape[2:]
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:
        (kernel,) = ctx.saved_tensors
        pad_x0, _, pad_y0, _ = ctx.pad
        in_h, in_w = ctx.in_hw
        out_h, out_w = grad_out.shape[2:]
        kernel_h, kernel_w = kernel.shape
        grad_pad_x = upfirdn2d_grad_pad(in_w, out_w, kernel_w, ctx.up, ctx.down, pad_x0)
        grad_pad_y = upfirdn2d_grad_pad(in_h, out_h, kernel_h, ctx.up, ctx.down, pad_y0)
        flipped = kernel.flip((0, 1))
        grad_x = _UpFirDn2d.apply(grad_out, flipped, ctx.down, ctx.up, grad_pad_x + grad_pad_y)
        return grad_x, None, None, None, None
