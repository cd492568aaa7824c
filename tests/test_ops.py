"""ops.py: choosing between the reference and the fused CUDA kernels, and their parity on a GPU."""

import functools
import logging
import subprocess
import sys

import pytest
import torch
import torch.utils.cpp_extension

from fsg_ray.nets import cuda_ops, ops
from fsg_ray.nets.ops import bias_leaky_relu, make_kernel, upfirdn2d

# (up, down, pad) as StyleGAN2 uses them, plus uneven and cropping pads.
UPFIRDN_CASES = [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (1, 2, (2, 2)), (2, 2, (1, 2)), (1, 1, (-1, 2))]


def gpu_parity(test):
    """Mark a fused-vs-reference test: `cuda`, skipped without a GPU, with time for the first build."""
    no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is present here")
    for mark in (pytest.mark.cuda, no_gpu, pytest.mark.timeout(900)):
        test = mark(test)
    return test


@pytest.fixture
def no_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("tried to compile the CUDA extension")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", refuse)


@pytest.fixture
def fresh_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which path lines were already logged, so this test sees its own."""
    monkeypatch.setattr(ops, "_logged", set())


def test_importing_ops_does_not_load_the_compiler():
    code = "import sys, fsg_ray, fsg_ray.nets.stylegan2; print('torch.utils.cpp_extension' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_auto_and_ref_agree_on_cpu_without_compiling(no_compiling):
    torch.manual_seed(0)
    x, bias = torch.randn(2, 5, 6, 7), torch.randn(5)
    assert torch.equal(bias_leaky_relu(x, bias, impl="auto"), bias_leaky_relu(x, bias, impl="ref"))
    kernel = make_kernel([1, 3, 3, 1])
    for up, down, pad in UPFIRDN_CASES:
        auto = upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="auto")
        assert torch.equal(auto, upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="ref"))


def test_cuda_impl_on_a_cpu_tensor_raises_a_clear_error(no_compiling):
    with pytest.raises(ValueError, match=r"bias_leaky_relu\(impl='cuda'\) needs CUDA tensors, got one on cpu"):
        bias_leaky_relu(torch.randn(2, 3), torch.randn(3), impl="cuda")
    with pytest.raises(ValueError, match=r"upfirdn2d\(impl='cuda'\) needs CUDA tensors, got one on cpu"):
        upfirdn2d(torch.randn(1, 1, 4, 4), make_kernel([1, 1]), impl="cuda")


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'triton'"):
        bias_leaky_relu(torch.randn(2, 3), torch.randn(3), impl="triton")


def test_impl_for_auto_makes_auto_run_the_named_path_inside_the_block_only(no_compiling):
    x, bias = torch.randn(2, 3), torch.randn(3)
    with ops.impl_for_auto("cuda"):
        with pytest.raises(ValueError, match=r"bias_leaky_relu\(impl='cuda'\) needs CUDA tensors"):
            bias_leaky_relu(x, bias)
        expected = torch.nn.functional.leaky_relu(x + bias, 0.2) * 2**0.5
        torch.testing.assert_close(bias_leaky_relu(x, bias, impl="ref"), expected)  # an explicit impl is kept
    assert torch.equal(bias_leaky_relu(x, bias), bias_leaky_relu(x, bias, impl="ref"))


def test_impl_for_auto_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'triton'"):
        with ops.impl_for_auto("triton"):
            pass


def test_bias_takes_the_dtype_of_the_input():
    """Under autocast an fp32 bias must not promote a bf16 activation to fp32."""
    out = bias_leaky_relu(torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(3))
    assert out.dtype == torch.bfloat16


def test_cpu_path_logs_that_it_uses_the_reference_once(no_compiling, fresh_log, caplog):
    caplog.set_level(logging.INFO, logger="fsg_ray.nets.ops")
    for _ in range(3):
        bias_leaky_relu(torch.randn(2, 3), torch.randn(3))
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["fsg_ray.ops: using reference PyTorch ops (inputs are not on a CUDA device)"]


def test_failed_build_falls_back_to_the_reference_with_one_warning(monkeypatch, caplog):
    attempts = []

    def failing_build(*args, **kwargs):
        attempts.append(kwargs["name"])
        raise RuntimeError("Error building extension 'fsg_ray_ops':\n[2/4] nvcc ...\nfused_act.cu(3): error: boom")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", failing_build)
    monkeypatch.setattr(cuda_ops, "_extension", None)
    monkeypatch.setattr(cuda_ops, "_build_error", None)
    caplog.set_level(logging.INFO, logger="fsg_ray.nets.ops")
    # The decision for a CUDA device; a failed build returns before any CUDA call, so no GPU is needed.
    assert ops._fused_ops_work.__wrapped__(torch.device("cuda", 0)) is False
    reason = "fused CUDA ops failed to build: fused_act.cu(3): error: boom"
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", f"fsg_ray.ops: using reference PyTorch ops ({reason})")
    ]
    with pytest.raises(cuda_ops.FusedOpsUnavailable, match="boom"):
        cuda_ops.load_extension()
    assert attempts == ["fsg_ray_ops"]  # a failed build is not retried


@pytest.mark.parametrize("up,down,pad", UPFIRDN_CASES)
@pytest.mark.parametrize("size", [7, 8])
def test_upfirdn2d_gradient_is_upfirdn2d_with_flipped_kernel(up, down, pad, size):
    """The identity the fused backward is built on, checked with the reference on CPU."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, size, size, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(4, 4, dtype=torch.float64)  # asymmetric, so a missing flip would show
    out = upfirdn2d(x, kernel, up=up, down=down, pad=pad)
    grad_out = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, grad_out)
    grad_pad = cuda_ops.upfirdn2d_grad_pad(size, out.shape[2], 4, up, down, pad[0])
    got = upfirdn2d(grad_out, kernel.flip((0, 1)), up=down, down=up, pad=grad_pad)
    torch.testing.assert_close(got, expected)


# -- parity of the fused kernels with the reference, on a GPU --------------------------------------


@gpu_parity
@pytest.mark.parametrize("shape", [(3, 8), (2, 8, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_bias_leaky_relu_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    bias = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
    fused = bias_leaky_relu(x, bias, impl="cuda")
    ref = bias_leaky_relu(x, bias, impl="ref")
    torch.testing.assert_close(fused, ref)
    grad_out = torch.randn_like(ref)
    for fused_grad, ref_grad in zip(
        torch.autograd.grad(fused, (x, bias), grad_out), torch.autograd.grad(ref, (x, bias), grad_out)
    ):
        torch.testing.assert_close(fused_grad, ref_grad)


@gpu_parity
def test_fused_bias_leaky_relu_double_backward_is_correct():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)

    def fused(x, bias):
        return bias_leaky_relu(x, bias, impl="cuda")

    assert torch.autograd.gradcheck(fused, (x, bias))
    assert torch.autograd.gradgradcheck(fused, (x, bias))


@gpu_parity
@pytest.mark.parametrize("up,down,pad", UPFIRDN_CASES)
def test_fused_upfirdn2d_matches_reference(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 6, device="cuda", requires_grad=True)  # not square: the axes differ
    kernel = make_kernel([1, 3, 3, 1]).cuda() * 4
    fused = upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="cuda")
    ref = upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="ref")
    torch.testing.assert_close(fused, ref)
    grad_out = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(fused, x, grad_out)[0], torch.autograd.grad(ref, x, grad_out)[0])


@gpu_parity
@pytest.mark.parametrize("up,down,pad", UPFIRDN_CASES)
def test_fused_upfirdn2d_double_backward_is_correct(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(4, 4, device="cuda", dtype=torch.float64)  # asymmetric, so a missing flip would show

    def fused(x):
        return upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="cuda")

    assert torch.autograd.gradcheck(fused, (x,))
    assert torch.autograd.gradgradcheck(fused, (x,))


@gpu_parity
def test_auto_on_cuda_logs_one_path_line_and_matches_reference(fresh_log, caplog, monkeypatch):
    monkeypatch.setattr(ops, "_fused_ops_work", functools.cache(ops._fused_ops_work.__wrapped__))
    caplog.set_level(logging.INFO, logger="fsg_ray.nets.ops")
    torch.manual_seed(0)
    x, bias = torch.randn(2, 8, 5, 7, device="cuda"), torch.randn(8, device="cuda")
    for _ in range(2):
        torch.testing.assert_close(bias_leaky_relu(x, bias), bias_leaky_relu(x, bias, impl="ref"))
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("fsg_ray.ops:")]
    assert len(lines) == 1 and "failed" not in lines[0], lines
