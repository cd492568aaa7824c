"""Mixed precision of the adaptation step (optim.precision): losses near fp32, fp32 regularisers, exact fp16 resume.

Runs on the CPU, where autocast supports bf16 and fp16 too (slowly, which a tiny model does not feel).
The stated tolerance: over the first six steps of a tiny model (anchor and patch steps, R1 at step
0, path length at steps 0 and 4) every loss of a bf16 or fp16 run stays within 5 % of the fp32 run's.
"""

import pytest
import torch
from tiny import TINY, tiny_source, tiny_targets

from fsg_ray.adapt.loop import new_adaptation
from fsg_ray.adapt.precision import MixedPrecision
from fsg_ray.config import ConfigError, load_config
from fsg_ray.nets.stylegan2 import Generator

LOSS_RTOL = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two fight for a loaded 2-core box (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(precision: str):
    return new_adaptation(tiny_source(), tiny_targets(), load_config(None, ["steps=8", f"optim.precision={precision}"]))


def losses(run, steps: int) -> list[dict[str, float]]:
    rows = []
    for _ in range(steps):
        stats = run.train_step()
        rows.append({k: v for k, v in vars(stats).items() if k in ("d_loss", "g_loss", "r1", "path_length") and v is not None})
    return rows


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_losses_stay_within_five_percent_of_fp32_for_six_steps(precision: str):
    reference, mixed = losses(tiny_run("fp32"), 6), losses(tiny_run(precision), 6)
    assert [row.keys() for row in mixed] == [row.keys() for row in reference]
    assert "r1" in mixed[0] and "path_length" in mixed[4]
    for step, (want, got) in enumerate(zip(reference, mixed)):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=LOSS_RTOL), f"step {step} {key}"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cdc_loss_stays_within_five_percent_of_fp32(precision: str):
    """On a G_t that has moved away from G_s (at the start both are equal and the loss is ~0)."""
    values = {}
    for name in ("fp32", precision):
        run = tiny_run(name)
        with torch.no_grad():
            for p in run.nets.g.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
        run.sample_rng.manual_seed(0)
        torch.manual_seed(0)
        values[name] = run.distance_consistency()
    assert values[precision].dtype == torch.float32
    assert values["fp32"] > 1e-4
    assert values[precision].item() == pytest.approx(values["fp32"].item(), rel=LOSS_RTOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_generator_activations_stay_in_half_precision_under_autocast(dtype: torch.dtype):
    """The fp32 biases and noise strengths must not promote activations back to fp32."""
    g = Generator(TINY)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = g.synthesis(g.latents(torch.randn(2, TINY.style_dim)), noise="random")
    assert {f.dtype for f in out.features} == {dtype}


def test_regularisers_run_in_fp32_in_a_bf16_run():
    run = tiny_run("bf16")
    seen = set()
    original = run._realism

    def spy(images, level):
        seen.add(torch.is_autocast_enabled("cpu"))
        return original(images, level)

    run._realism = spy
    run.r1_step()
    assert set(seen) == {False}
    run.d_step()
    assert set(seen) == {False, True}


def test_resuming_an_fp16_run_reproduces_the_uninterrupted_run():
    straight = tiny_run("fp16")
    for _ in range(6):
        straight.train_step()
    first = tiny_run("fp16")
    for _ in range(3):
        first.train_step()
    ckpt = first.checkpoint("tiny", "random")
    resumed = tiny_run("fp16")
    resumed.restore(ckpt)
    assert resumed.precision.state_dict() == first.precision.state_dict()
    for _ in range(3):
        resumed.train_step()
    a, b = straight.nets.g.state_dict(), resumed.nets.g.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_skips_a_step_whose_gradients_overflow_and_lowers_the_scale():
    precision = MixedPrecision("fp16", torch.device("cpu"))
    weight = torch.nn.Parameter(torch.ones(3))
    optim = torch.optim.SGD([weight], lr=1.0)
    scale = precision.scalers["d"].get_scale()
    precision.backward("d", (weight * torch.tensor([1.0, float("inf"), 1.0])).sum())
    precision.step("d", optim, lambda params: None, [weight])
    assert torch.equal(weight.detach(), torch.ones(3))
    assert precision.scalers["d"].get_scale() < scale


def test_an_unknown_precision_is_rejected_with_its_key():
    with pytest.raises(ConfigError, match=r"optim.precision: expected 'fp32', 'bf16' or 'fp16', got 'int8'"):
        load_config(None, ["optim.precision=int8"])
