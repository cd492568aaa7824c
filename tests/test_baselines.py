"""The comparison methods of SPEC §5 as hooks of the one loop: FreezeD, EWC, ADA, BSA, MineGAN."""

import io
from typing import Any

import pytest
import torch
from tiny import TINY, tiny_source, tiny_targets

from fsg_ray.adapt.loop import Adaptation, new_adaptation
from fsg_ray.adapt.methods import METHODS, ewc
from fsg_ray.adapt.methods.bsa import folded_state
from fsg_ray.adapt.methods.minegan import load_miner
from fsg_ray.config import ConfigError, load_config
from fsg_ray.nets.checkpoints import build_generator
from fsg_ray.nets.stylegan2 import Generator

SMALL = {"freezed": ["baselines.freeze_d_blocks=2"], "ewc": ["baselines.ewc_samples=8"], "ada": ["augment.interval=1", "augment.kimg=0.1"], "adam": ["adam.probe_steps=2", "adam.fisher_batches=1"], "rick": ["rick.warmup_steps=1", "rick.fisher_every=2", "rick.fisher_batches=1"]}


def tiny_run(method: str, *overrides: str) -> Adaptation:
    return new_adaptation(tiny_source(), tiny_targets(), load_config(None, ["steps=8", f"method={method}", *SMALL.get(method, []), *overrides]))


def clone(named: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in dict(named).items()}


def train(run: Adaptation, steps: int) -> Adaptation:
    for _ in range(steps):
        run.train_step()
    return run


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# --- FreezeD -------------------------------------------------------------------------------------


def is_frozen(name: str, blocks: int) -> bool:
    return name.startswith(tuple(f"convs.{i}." for i in range(blocks + 1)))


def test_freezed_keeps_the_high_resolution_d_blocks_and_trains_the_rest():
    run = tiny_run("freezed")
    before = clone(run.nets.d.named_parameters())
    after = dict(train(run, 3).nets.d.named_parameters())
    frozen = [k for k in before if is_frozen(k, 2)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


def test_freezed_blocks_are_outside_the_d_optimizer_and_need_no_gradient():
    run = tiny_run("freezed")
    optimised = {id(p) for group in run.d_optim.param_groups for p in group["params"]}
    for name, p in run.nets.d.named_parameters():
        assert (id(p) in optimised) != is_frozen(name, 2), name
        assert p.requires_grad != is_frozen(name, 2), name


def test_freezed_rejects_more_blocks_than_the_discriminator_has():
    with pytest.raises(ConfigError, match="freeze_d_blocks"):
        tiny_run("freezed", "baselines.freeze_d_blocks=4")


# --- EWC -----------------------------------------------------------------------------------------


def test_ewc_penalty_is_zero_at_the_source_and_positive_away_from_it():
    run = tiny_run("ewc")
    assert run.method.g_penalty(run.nets).item() == 0.0
    with torch.no_grad():
        for p in run.nets.g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert run.method.g_penalty(run.nets).item() > 0.0


def test_ewc_penalty_is_lambda_times_the_fisher_weighted_squared_distance():
    run = tiny_run("ewc", "baselines.ewc_weight=3.0")
    name, p = next((n, p) for n, p in run.nets.g.named_parameters() if run.method.fisher[n].sum() > 0)
    with torch.no_grad():
        p.add_(0.5)
    expected = 3.0 * (run.method.fisher[name] * 0.25).sum()
    assert run.method.g_penalty(run.nets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_ewc_estimates_a_non_negative_fisher_once(monkeypatch):
    calls = []
    estimate = ewc.fisher_diagonal
    monkeypatch.setattr(ewc, "fisher_diagonal", lambda *args: calls.append(args) or estimate(*args))
    run = tiny_run("ewc")
    fisher = clone(run.method.fisher)
    train(run, 3)
    assert len(calls) == 1
    assert_same(fisher, run.method.fisher)
    assert all((f >= 0).all() for f in fisher.values()) and any((f > 0).any() for f in fisher.values())


def test_ewc_fisher_estimate_leaves_the_source_generator_frozen():
    run = tiny_run("ewc")
    assert not any(p.requires_grad for p in run.nets.g_source.parameters())


# --- ADA -----------------------------------------------------------------------------------------


def test_ada_augments_without_augment_enabled():
    run = tiny_run("ada")
    assert not run.config.augment.enabled and run.augment is not None


def test_ada_resume_continues_the_augmentation_strength():
    def started(p: float) -> Adaptation:
        run = tiny_run("ada")
        run.augment.p = p
        return run

    straight = train(started(0.5), 4)
    ckpt = train(started(0.5), 2).checkpoint("tiny", "random")
    resumed = started(0.0)
    resumed.restore(ckpt)
    train(resumed, 2)
    assert resumed.augment.p == straight.augment.p != 0.5
    assert_same(clone(straight.nets.g.state_dict()), clone(resumed.nets.g.state_dict()))


# --- BSA -----------------------------------------------------------------------------------------


def test_bsa_trains_only_its_scales_and_shifts():
    run = tiny_run("bsa")
    scales_shifts = [*run.method.gamma.values(), *run.method.beta.values()]
    assert {id(p) for group in run.g_optim.param_groups for p in group["params"]} == {id(p) for p in scales_shifts}
    before = [p.detach().clone() for p in scales_shifts]
    train(run, 3)
    assert all(not torch.equal(a, b) for a, b in zip(before, scales_shifts))


def test_bsa_leaves_every_source_weight_of_g_unchanged():
    run = tiny_run("bsa")
    before = clone(run.nets.g.state_dict())
    assert_same(before, clone(train(run, 3).nets.g.state_dict()))


def test_bsa_folded_state_reproduces_the_trained_generator_exactly():
    run = train(tiny_run("bsa"), 3)
    plain = Generator(TINY)
    plain.load_state_dict(folded_state(run.nets.g, run.method.gamma, run.method.beta))
    z = torch.randn(4, TINY.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(plain(z, noise="const"), run.nets.g(z, noise="const"))


def test_bsa_exported_g_ema_carries_the_trained_scales_and_shifts():
    run = train(tiny_run("bsa", "optim.ema_decay=0.0"), 3)
    exported = build_generator(run.checkpoint("tiny", "random"), "g_ema")
    z = torch.randn(4, TINY.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(exported(z, noise="const"), run.nets.g(z, noise="const"))


# --- MineGAN -------------------------------------------------------------------------------------


def test_minegan_leaves_every_weight_of_g_unchanged():
    run = tiny_run("minegan")
    before = clone(run.nets.g.state_dict())
    assert_same(before, clone(train(run, 3).nets.g.state_dict()))


def test_minegan_trains_the_miner():
    run = tiny_run("minegan")
    before = clone(run.method.miner.named_parameters())
    after = dict(train(run, 3).method.miner.named_parameters())
    assert {id(p) for group in run.g_optim.param_groups for p in group["params"]} == {id(p) for p in after.values()}
    assert all(not torch.equal(before[k], after[k]) for k in ("out.weight", "out.bias"))


def test_minegan_miner_starts_as_the_identity():
    run = tiny_run("minegan")
    z = torch.randn(4, TINY.style_dim)
    assert torch.equal(run.method.map_z([z])[0], z)


def test_minegan_checkpoint_carries_the_miner_and_the_frozen_generator():
    run = train(tiny_run("minegan"), 3)
    ckpt = run.checkpoint("tiny", "random")
    z = torch.randn(4, TINY.style_dim)
    with torch.no_grad():
        assert torch.equal(load_miner(ckpt)(z), run.method.miner(z))
    assert_same(build_generator(ckpt, "g").state_dict(), tiny_source()["g"])


# --- every method --------------------------------------------------------------------------------


def weights_only_roundtrip(ckpt: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_from_a_checkpoint_exactly(method):
    straight = train(tiny_run(method), 4)
    ckpt = weights_only_roundtrip(train(tiny_run(method), 2).checkpoint("tiny", "random"))
    resumed = tiny_run(method)
    resumed.restore(ckpt)
    train(resumed, 2)
    for name in ("g", "g_ema", "d", "heads"):
        assert_same(clone(getattr(straight.nets, name).state_dict()), clone(getattr(resumed.nets, name).state_dict()), name)
    assert_same(straight.method.state_dict(), resumed.method.state_dict(), "method_state")
    assert resumed.mean_path_length == straight.mean_path_length
