"""Parity of the fused CUDA ops with the pure-PyTorch reference, forward and gradients, at the generator's sizes.

Both paths run each case in the same dtype; each is compared with the reference run in float64
(the truth), as max |error| / max |truth|. A fused kernel passes when its error is at most twice the
reference's plus 1e-6: no less accurate than the pure-PyTorch op in the same dtype. Cases: the two ops
at the shapes the 256px generator and discriminator feed them (fp32, bf16, fp16), and a whole
generator forward and backward (every parameter's gradient). Exits 1 if a fused case fails.
Without CUDA (the CPU toy mode) only the reference columns are filled, at toy sizes.

    python bench/gpu_parity.py                # on the GPU
    python bench/gpu_parity.py --toy          # small shapes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fsg_ray.nets import ops
from fsg_ray.nets.ops import bias_leaky_relu, make_kernel, upfirdn2d
from fsg_ray.nets.stylegan2 import Generator, ModelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    """`run(inputs, impl)` -> output; inputs are float tensors whose gradients are compared."""

    name: str
    inputs: Callable[[torch.dtype, torch.device], list[Tensor]]
    run: Callable[[list[Tensor], str], Tensor]


def random_inputs(*shapes: tuple[int, ...]) -> Callable[[torch.dtype, torch.device], list[Tensor]]:
    def make(dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        rng = torch.Generator().manual_seed(0)
        return [torch.randn(shape, generator=rng, dtype=torch.float64).to(device, dtype) for shape in shapes]

    return make


def op_cases(toy: bool) -> list[Case]:
    """(batch, channels, size) of the layers that feed each op; --toy shrinks them."""
    b = 2 if toy else 4
    c_top, c_mid = (8, 16) if toy else (128, 512)
    s_top, s_mid = (16, 8) if toy else (256, 32)
    up_kernel = make_kernel([1, 3, 3, 1]) * 4
    down_kernel = make_kernel([1, 3, 3, 1])
    return [
        Case(f"bias_leaky_relu [{b},{c_mid},{s_mid},{s_mid}]", random_inputs((b, c_mid, s_mid, s_mid), (c_mid,)), lambda t, impl: bias_leaky_relu(t[0], t[1], impl=impl)),
        Case(f"bias_leaky_relu [{b},{c_top},{s_top},{s_top}]", random_inputs((b, c_top, s_top, s_top), (c_top,)), lambda t, impl: bias_leaky_relu(t[0], t[1], impl=impl)),
        Case(f"upfirdn2d up2 (ToRGB skip) [{b},3,{s_top // 2},{s_top // 2}]", random_inputs((b, 3, s_top // 2, s_top // 2)), lambda t, impl: upfirdn2d(t[0], up_kernel.to(t[0].device), up=2, pad=(2, 1), impl=impl)),
        Case(f"upfirdn2d blur after up-conv [{b},{c_top},{s_top + 1},{s_top + 1}]", random_inputs((b, c_top, s_top + 1, s_top + 1)), lambda t, impl: upfirdn2d(t[0], up_kernel.to(t[0].device), pad=(1, 1), impl=impl)),
        Case(f"upfirdn2d blur before D's stride-2 conv [{b},{c_top},{s_top},{s_top}]", random_inputs((b, c_top, s_top, s_top)), lambda t, impl: upfirdn2d(t[0], down_kernel.to(t[0].device), pad=(2, 2), impl=impl)),
    ]


def generator_case(toy: bool) -> tuple[Case, Generator]:
    config = ModelConfig(size=32, style_dim=16, n_mlp=2, channel_max=16) if toy else ModelConfig(size=256, channel_multiplier=2)
    torch.manual_seed(0)
    g = Generator(config)

    def run(inputs: list[Tensor], impl: str) -> Tensor:
        with ops.impl_for_auto(impl):
            return g(inputs[0], noise="const")

    return Case(f"generator {config.size}px forward + backward, batch 2", random_inputs((2, config.style_dim)), run), g


def relative_error(value: Tensor, truth: Tensor) -> float:
    return ((value.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


def outputs_and_grads(case: Case, dtype: torch.dtype, device: torch.device, impl: str, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The case's output and the gradient of <output, fixed random weights> w.r.t. its inputs and `params`."""
    inputs = [t.requires_grad_(True) for t in case.inputs(dtype, device)]
    out = case.run(inputs, impl)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, out.dtype)
    grads = torch.autograd.grad((out * weights).sum(), inputs + params)
    return out.detach(), torch.cat([g.double().flatten() for g in grads])


def parity_row(case: Case, dtype_name: str, device: torch.device, fused: bool, model: Generator | None = None) -> tuple[str, bool]:
    dtype = DTYPES[dtype_name]
    if model is not None:
        model.to(device, torch.float64)
    params = list(model.parameters()) if model is not None else []
    truth, truth_grad = outputs_and_grads(case, torch.float64, device, "ref", params)
    if model is not None:
        model.to(dtype)
    out, grad = outputs_and_grads(case, dtype, device, "ref", params)
    ref_errors = [relative_error(out, truth), relative_error(grad, truth_grad)]
    if not fused:
        return f"| {case.name} | {dtype_name} | {ref_errors[0]:.2e} | n/a | {ref_errors[1]:.2e} | n/a | |", True
    fused_out, fused_grad = outputs_and_grads(case, dtype, device, "cuda", params)
    fused_errors = [relative_error(fused_out, truth), relative_error(fused_grad, truth_grad)]
    ok = all(f <= 2 * r + 1e-6 for f, r in zip(fused_errors, ref_errors))
    text = f"{ref_errors[0]:.2e} | {fused_errors[0]:.2e} | {ref_errors[1]:.2e} | {fused_errors[1]:.2e}"
    return f"| {case.name} | {dtype_name} | {text} | {'ok' if ok else 'FAIL'} |", ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="small shapes (always without CUDA)")
    args = parser.parse_args()
    fused = torch.cuda.is_available()
    args.toy = args.toy or not fused
    device = torch.device("cuda" if fused else "cpu")
    where = torch.cuda.get_device_name(device) if fused else "CPU (no CUDA device: fused columns n/a)"
    print(f"\nfused CUDA ops vs pure-PyTorch reference on {where}; torch {torch.__version__}")
    print("error = max |x - x_fp64| / max |x_fp64|; ok = fused error <= 2 x reference error + 1e-6")
    print("| case | dtype | forward ref | forward fused | gradient ref | gradient fused | |")
    print("|---|---|---:|---:|---:|---:|---|", flush=True)
    failed = []
    for case in op_cases(args.toy):
        for dtype_name in DTYPES if fused else ("fp32",):
            line, ok = parity_row(case, dtype_name, device, fused)
            print(line, flush=True)
            if not ok:
                failed.append(f"{case.name} {dtype_name}")
    case, g = generator_case(args.toy)
    line, ok = parity_row(case, "fp32", device, fused, g)
    print(line, flush=True)
    if not ok:
        failed.append(case.name)
    if failed:
        print(f"fused ops less accurate than the reference: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
