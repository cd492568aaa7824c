"""A search rung measures G_ema without the source's share (adapt/ema.py): the EMA of what G_t learned so far."""

from pathlib import Path

import pytest
import torch
from tiny import tiny_source, tiny_targets

from fsg_ray.adapt.ema import is_intermediate, rung_state, source_share
from fsg_ray.adapt.loop import new_adaptation
from fsg_ray.config import load_config
from fsg_ray.eval.protocol import evaluate
from fsg_ray.eval.results import EvalError, EvalSettings
from fsg_ray.nets.checkpoints import write_checkpoint

STEPS = 6


def trained_run(steps: int, run_steps: int = 2 * STEPS):
    """A tiny CDC run of `run_steps` trained for `steps`, and G_t's parameters after each of them."""
    run = new_adaptation(tiny_source(), tiny_targets(), load_config(None, [f"steps={run_steps}", "optim.ema_decay=0.8", "noise.strength=learned"]))
    trajectory = []
    for _ in range(steps):
        run.train_step()
        trajectory.append([p.detach().clone() for p in run.nets.g.parameters()])
    return run, trajectory


def test_an_intermediate_checkpoint_is_measured_as_the_normalised_ema_of_the_g_t_trajectory(tmp_path: Path):
    run, trajectory = trained_run(STEPS)
    write_checkpoint(str(tmp_path / "source.pt"), tiny_source())
    ckpt = run.checkpoint(str(tmp_path / "source.pt"), "toy:sketch")
    decay = ckpt["ema_decay"]
    assert source_share(ckpt) == pytest.approx(decay**STEPS) and is_intermediate(ckpt)

    corrected = rung_state(ckpt, str(tmp_path / "source.pt"))["g_ema"]
    weights = [(1 - decay) * decay ** (STEPS - 1 - j) for j in range(STEPS)]
    names = [name for name, _ in run.nets.g.named_parameters()]
    for i, name in enumerate(names):
        expected = sum(w * g[i] for w, g in zip(weights, trajectory)) / sum(weights)
        torch.testing.assert_close(corrected[name], expected, rtol=1e-4, atol=1e-5, msg=name)
    moved = [name for name in names if not torch.equal(ckpt["g_ema"][name], corrected[name])]
    assert moved, "the correction changed nothing: the source share was not removed"


def test_the_runs_last_checkpoint_is_left_as_the_g_ema_it_exports(tmp_path: Path):
    run, _ = trained_run(STEPS, run_steps=STEPS)
    write_checkpoint(str(tmp_path / "source.pt"), tiny_source())
    ckpt = run.checkpoint(str(tmp_path / "source.pt"), "toy:sketch")
    assert not is_intermediate(ckpt)
    assert rung_state(ckpt, str(tmp_path / "source.pt")) is ckpt


def test_a_rung_evaluation_differs_from_the_stored_g_ema_and_needs_the_source(tmp_path: Path, source: str):
    run, _ = trained_run(STEPS)
    write_checkpoint(str(tmp_path / "rung.pt"), run.checkpoint(source, "closed:sketch"))
    target = f"closed:sketch@{source}"
    settings = EvalSettings(n_generated=8, n_real=8, n_lpips=8, n_corr=8, kid_subset_size=8, features="offline")
    stored = evaluate(str(tmp_path / "rung.pt"), target, metrics=["corr"], settings=settings)
    as_rung = evaluate(str(tmp_path / "rung.pt"), target, metrics=["corr"], settings=settings, rung=True)
    assert as_rung.metrics["corr_l1"] != stored.metrics["corr_l1"]
    with pytest.raises(EvalError, match="rung: .*needs the run's source"):
        evaluate(str(tmp_path / "rung.pt"), "toy:sketch", metrics=["kid"], settings=settings, rung=True)
