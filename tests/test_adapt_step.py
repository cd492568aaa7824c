"""The adaptation step: anchor schedule, D modes, regularisers, EMA, exact resume."""


import pytest
import torch
from tiny import TINY, tiny_source, tiny_targets

from fsg_ray.adapt.anchors import (
    is_anchor_iteration,
    phase_latents,
    sample_near_anchors,
)
from fsg_ray.adapt.loop import lazy_adam, new_adaptation
from fsg_ray.adapt.losses import d_logistic_loss, g_nonsaturating_loss, r1_penalty
from fsg_ray.config import REFERENCE_EMA_DECAY, AnchorConfig, ConfigError, ema_decay_for_short_run, load_config
from fsg_ray.nets.stylegan2 import Discriminator


def tiny_run(*overrides: str):
    return new_adaptation(tiny_source(), tiny_targets(), load_config(None, ["steps=8", *overrides]))


def test_every_fourth_iteration_is_an_anchor_iteration():
    config = AnchorConfig()
    assert [is_anchor_iteration(i, config) for i in range(9)] == [True, False, False, False, True, False, False, False, True]


def test_anchor_iterations_sample_near_the_anchors_without_mixing():
    anchors = torch.randn(10, 16)
    latents = phase_latents(4, 6, 16, anchors, AnchorConfig(std=0.1), mixing=1.0, n_latent=8, generator=torch.Generator().manual_seed(0))
    assert len(latents.z) == 1 and latents.inject_index is None
    nearest = torch.cdist(latents.z[0], anchors).min(dim=1).values
    assert nearest.max() < 0.1 * 16**0.5 * 2


def test_other_iterations_mix_two_fresh_codes_with_probability_mixing():
    rng = torch.Generator().manual_seed(0)
    draws = [phase_latents(1, 2, 16, torch.zeros(10, 16), AnchorConfig(), mixing=0.9, n_latent=8, generator=rng) for _ in range(400)]
    mixed = sum(len(d.z) == 2 for d in draws) / len(draws)
    assert 0.85 < mixed < 0.95
    assert all(1 <= d.inject_index < 8 for d in draws if d.inject_index is not None)


def test_anchor_samples_pick_anchors_uniformly_with_replacement():
    anchors = torch.arange(10.0)[:, None].repeat(1, 4)
    z = sample_near_anchors(anchors, 2000, 0.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(z[:, 0].long(), minlength=10)
    assert counts.min() > 150


def test_anchor_iterations_use_the_image_discriminator_and_others_a_patch_head():
    run = tiny_run()
    seen = []
    original = run._realism
    run._realism = lambda images, level: seen.append(level) or original(images, level)
    run.train_step()  # iteration 0: anchor
    assert set(seen) == {None}
    seen.clear()
    run.train_step()  # iteration 1: patch level (only level 0 with the default patch_levels=1)
    assert set(seen) == {0}


def test_off_anchor_d_image_judges_every_iteration_with_the_image_discriminator_and_keeps_anchors_and_cdc():
    run = tiny_run("anchors.off_anchor_d=image")
    levels = []
    original = run._realism
    run._realism = lambda images, level: levels.append(level) or original(images, level)
    stats = [run.train_step() for _ in range(3)]
    assert set(levels) == {None} and run.anchors is not None
    assert [s.anchor for s in stats] == [True, False, False] and all(s.cdc_loss > 0 for s in stats)


def test_an_unknown_off_anchor_d_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"anchors\.off_anchor_d: expected patch or image, got 'pixel'"):
        load_config(None, ["anchors.off_anchor_d=pixel"])


def test_tgan_always_uses_the_image_discriminator_and_no_anchors():
    run = tiny_run("method=tgan")
    levels = []
    original = run._realism
    run._realism = lambda images, level: levels.append(level) or original(images, level)
    for _ in range(3):
        run.train_step()
    assert run.anchors is None and set(levels) == {None}


def test_patch_heads_are_drawn_from_all_levels():
    run = tiny_run("anchors.patch_levels=3")
    levels = {run._patch_level() for run.step in range(1, 200) if run.step % 4}
    assert levels == {0, 1, 2}


def test_patch_levels_beyond_the_discriminators_patch_maps_are_rejected_naming_value_and_maximum():
    with pytest.raises(ConfigError, match=r"anchors\.patch_levels: the 32px discriminator has 3 patch maps .*got 4"):
        tiny_run("anchors.patch_levels=4")


def test_r1_equals_squared_norm_of_the_gradient_of_a_linear_critic():
    w = torch.randn(3 * 4 * 4)
    images = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = images.flatten(1) @ w
    assert r1_penalty(logits, images).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_r1_on_patch_logits_averages_each_images_patches_first():
    w = torch.randn(3 * 4 * 4)
    images = torch.randn(5, 3, 4, 4, requires_grad=True)
    patch_logits = (images.flatten(1) @ w).view(5, 1, 1, 1).expand(5, 1, 8, 8)  # every patch sees the same critic
    assert r1_penalty(patch_logits, images).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_r1_step_on_a_patch_iteration_penalises_the_per_image_mean_of_the_patch_logits():
    run = tiny_run("anchors.every=3")
    run.step = 16  # an R1 iteration (16 % d_reg_every == 0) that is a patch iteration (16 % 3 != 0)
    run._seed_step()
    expected, levels = [], []
    original = run._realism

    def realism_and_reference_r1(images, level):
        logits = original(images, level)
        (grad,) = torch.autograd.grad(logits.flatten(1).mean(dim=1).sum(), images, retain_graph=True)
        expected.append(grad.pow(2).flatten(1).sum(dim=1).mean().item())
        levels.append(level)
        return logits

    run._realism = realism_and_reference_r1
    assert run.r1_step() == pytest.approx(expected[0], rel=1e-5)
    assert levels == [0]


def test_r1_matches_an_autograd_reference_for_the_discriminator():
    d = Discriminator(TINY)
    images = torch.randn(4, 3, 32, 32, requires_grad=True)
    penalty = r1_penalty(d(images), images)
    grads = torch.stack([torch.autograd.functional.jacobian(lambda x: d(x).sum(), images)]).squeeze(0)
    assert penalty.item() == pytest.approx(grads.pow(2).flatten(1).sum(1).mean().item(), rel=1e-4)


def test_logistic_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    softplus = lambda x: torch.log1p(torch.exp(x))  # noqa: E731
    assert d_logistic_loss(real, fake).item() == pytest.approx((softplus(-real).mean() + softplus(fake).mean()).item())
    assert g_nonsaturating_loss(fake).item() == pytest.approx(softplus(-fake).mean().item())


def test_ema_moves_each_weight_by_one_minus_decay_of_the_gap():
    run = tiny_run()
    with torch.no_grad():
        for p in run.nets.g.parameters():
            p.add_(1.0)
    before = [p.clone() for p in run.nets.g_ema.parameters()]
    run.ema_update()
    decay = run.ema_decay
    for b, p_ema, p in zip(before, run.nets.g_ema.parameters(), run.nets.g.parameters()):
        assert torch.allclose(p_ema, decay * b + (1 - decay) * p, atol=1e-6)


@pytest.mark.parametrize("steps", [10, 100, 300])
def test_short_run_ema_keeps_a_thousandth_of_the_source_after_the_run(steps: int):
    ema = torch.zeros(1)
    for _ in range(steps):
        ema.lerp_(torch.ones(1), 1.0 - ema_decay_for_short_run(steps))
    assert 1.0 - ema.item() == pytest.approx(0.5**10, rel=1e-3)


def test_short_run_ema_rejects_an_empty_run():
    with pytest.raises(ConfigError, match="steps"):
        ema_decay_for_short_run(0)


@pytest.mark.parametrize("steps", [10, 400, 3000])
def test_default_ema_decay_gives_a_run_shorter_than_3125_steps_a_half_life_of_a_tenth_of_it(steps: int):
    assert load_config(None, [f"steps={steps}"]).ema_decay == pytest.approx(0.5 ** (10 / steps))


@pytest.mark.parametrize("steps", [3125, 5000, 100_000])
def test_default_ema_decay_is_the_reference_decay_for_runs_long_enough_for_it(steps: int):
    assert load_config(None, [f"steps={steps}"]).ema_decay == pytest.approx(REFERENCE_EMA_DECAY)
    assert REFERENCE_EMA_DECAY == 0.5 ** (32 / 10000)


def test_an_explicit_ema_decay_is_used_whatever_the_run_length():
    assert load_config(None, ["steps=400", "optim.ema_decay=0.999"]).ema_decay == 0.999


def test_an_ema_decay_outside_zero_to_one_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"optim\.ema_decay.*1\.5"):
        load_config(None, ["optim.ema_decay=1.5"])


def test_the_checkpoint_records_the_ema_decay_the_run_used():
    run = tiny_run("steps=400")
    run.train_step()
    assert run.checkpoint("tiny", "random")["ema_decay"] == run.ema_decay == pytest.approx(0.5 ** (10 / 400))


def test_lazy_adam_rescales_lr_and_betas():
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], 0.002, 16)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.002 * 16 / 17)
    assert group["betas"] == (0.0, pytest.approx(0.99 ** (16 / 17)))


def test_every_d_parameter_that_had_a_gradient_steps_on_every_later_d_optimizer_step():
    run = tiny_run()
    for _ in range(5):  # D optimizer steps: iteration 0 D + R1, iterations 1-4 D: 6
        run.train_step()
    steps = {id(p): int(state["step"]) for p, state in run.d_optim.state.items()}
    heads = run.nets.heads.heads
    assert {steps[id(p)] for p in run.nets.d.final_linear.parameters()} == {6}  # unused on patch iterations 1-3
    assert {steps[id(p)] for p in heads[0].parameters()} == {4}  # first gradient on iteration 1, unused on anchor iteration 4
    assert not any(id(p) in steps for p in heads[1:].parameters())  # never drawn with patch_levels=1


def test_initialisation_copies_the_source_and_freezes_g_source():
    source = tiny_source()
    run = new_adaptation(source, tiny_targets(), load_config(None, []))
    for key, value in source["g"].items():
        assert torch.equal(run.nets.g.state_dict()[key], value)
        assert torch.equal(run.nets.g_source.state_dict()[key], value)
    assert not any(p.requires_grad for p in run.nets.g_source.parameters())


def test_a_step_changes_g_and_d_but_never_g_source():
    run = tiny_run()
    g0 = [p.clone() for p in run.nets.g.parameters()]
    s0 = [p.clone() for p in run.nets.g_source.parameters()]
    d0 = [p.clone() for p in run.nets.d.parameters()]
    run.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(g0, run.nets.g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, run.nets.d.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(s0, run.nets.g_source.parameters()))


def test_training_is_deterministic_for_a_seed():
    a, b = tiny_run(), tiny_run()
    for _ in range(3):
        a.train_step()
        b.train_step()
    assert all(torch.equal(x, y) for x, y in zip(a.nets.g.parameters(), b.nets.g.parameters()))


def test_resuming_from_step_k_reproduces_the_uninterrupted_run():
    straight = tiny_run()
    for _ in range(6):
        straight.train_step()
    first = tiny_run()
    for _ in range(3):
        first.train_step()
    ckpt = first.checkpoint("tiny", "random")
    resumed = tiny_run()
    resumed.restore(ckpt)
    for _ in range(3):
        resumed.train_step()
    for name in ("g", "g_ema", "d", "heads"):
        a = getattr(straight.nets, name).state_dict()
        b = getattr(resumed.nets, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.mean_path_length == straight.mean_path_length
