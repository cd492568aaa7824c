"""bench/gpu.sh and its helpers: the CPU toy run that keeps the GPU script from rotting, and the parts it computes."""

import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsg_ray.config import load_config
from fsg_ray.nets.stylegan2 import ModelConfig

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
SECTIONS = ["environment", "CUDA op parity", "CUDA tests", "generator throughput", "adaptation step", "Ray Train worker"]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_forward = load_bench("gen_forward")
gpu_step = load_bench("gpu_step")


def run_script(*args: str, python: str = sys.executable, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def summary(stdout: str) -> dict[str, str]:
    """Section name -> result, from the script's closing summary table."""
    tail = stdout[stdout.index("=== summary") :]
    return {m[1]: m[2] for m in re.finditer(r"^\| (.+?) \| (.+?) \| \d+ \|$", tail, re.MULTILINE)}


@pytest.mark.ray
@pytest.mark.timeout(1560)
def test_cpu_toy_run_prints_every_table_and_passes():
    result = run_script("--cpu-toy", timeout=1530)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    results = summary(result.stdout)
    assert {name: results[name] for name in SECTIONS} == dict.fromkeys(SECTIONS, "ok")
    for bench in ("bench/serve_load.py", "bench/synthesize.py"):
        expected = "ok" if (ROOT / bench).exists() else "skipped: not in this checkout"
        assert results[bench] == expected
    for header in (
        "| case | dtype | forward ref | forward fused | gradient ref | gradient fused | |",
        "| variant | batch | images/s | x vs fp32 | utilisation % | peak memory GiB |",
        "| variant | D | R1 | G + CDC | path length |",
        "| weights of G and D (max over tensors) |",
    ):
        assert header in result.stdout


def test_a_failing_section_is_reported_and_the_later_ones_still_run(tmp_path: Path):
    """Every bench script fails at once here (the interpreter refuses them); all sections are still tried."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$1" in bench/*|-m) echo "refused $1" >&2; exit 3 ;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    result = run_script("--cpu-toy", python=str(python), timeout=280)
    assert result.returncode == 1
    results = summary(result.stdout)
    assert results["environment"] == "ok"
    assert {name: results[name] for name in SECTIONS[1:]} == dict.fromkeys(SECTIONS[1:], "failed (exit 3)")


def test_unknown_arguments_are_refused():
    result = run_script("--fast", timeout=30)
    assert result.returncode == 2
    assert "unknown argument '--fast' (only --cpu-toy)" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_mode_without_a_gpu_points_to_the_cpu_toy_mode():
    result = run_script(timeout=60)
    assert result.returncode == 2
    assert "sees no CUDA device; run with --cpu-toy" in result.stderr


@pytest.mark.parametrize(
    "name,peak",
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("Tesla T4", None)],
)
def test_the_bf16_peak_is_looked_up_by_card_name(name: str, peak: float | None):
    assert gen_forward.dense_bf16_tflops(name) == peak


def test_flop_count_is_the_generators_matrix_products_and_convolutions():
    """Counted by hand: mapping MLP, one modulation linear per conv, 3x3 convs (transposed ones at
    their input size), 1x1 ToRGBs, and the 4x4 FIR filters after each upsampling (the blur of the
    up-conv's output, the ToRGB skip's upsampling); 2 FLOPs per multiply-add."""
    config = ModelConfig(size=32, style_dim=16, n_mlp=2, channel_max=8)
    macs = config.n_mlp * config.style_dim**2
    c4 = config.channels(4)
    macs += 16 * c4 * c4 * 9 + 16 * c4 * 3 + config.style_dim * (c4 + c4)
    in_ch = c4
    for res in (8, 16, 32):
        out_ch = config.channels(res)
        macs += (res // 2) ** 2 * in_ch * out_ch * 9 + res**2 * out_ch * out_ch * 9 + res**2 * out_ch * 3
        macs += config.style_dim * (in_ch + out_ch + out_ch)
        macs += res**2 * (out_ch + 3) * 16
        in_ch = out_ch
    assert gen_forward.flops_per_image(config) == 2 * macs


@pytest.mark.parametrize("name", ["bf16+compile", "fp16+channels_last+ref", "channels_last"])
def test_throughput_variants_combine_a_dtype_with_modifiers(name: str):
    variant = gen_forward.Variant.parse(name)
    assert variant.dtype == ("fp32" if name == "channels_last" else name.split("+")[0])
    assert (variant.channels_last, variant.compile, variant.ref_ops) == tuple(m in name for m in ("channels_last", "compile", "ref"))


@pytest.mark.parametrize("name", ["int8", "bf16+fast", "bf16+compile+compile", "compile+bf16"])
def test_malformed_throughput_variants_are_named(name: str):
    with pytest.raises(SystemExit, match=re.escape(f"variant {name!r}")):
        gen_forward.Variant.parse(name)


def test_step_kinds_follow_the_anchor_and_lazy_regulariser_schedule():
    config = load_config(None, [])
    kinds = [gpu_step.step_kind(step, config) for step in range(17)]
    assert kinds[0] == kinds[16] == "anchor + R1 + PL"
    assert kinds[4] == kinds[8] == kinds[12] == "anchor + PL"
    assert {kinds[i] for i in range(17) if i % 4} == {"patch"}
