"""Adaptive differentiable augmentation: the transforms, ADA's controller of p, and the option of every method."""

import pytest
import torch
from tiny import tiny_source, tiny_targets

from fsg_ray.adapt import augment as augment_module
from fsg_ray.adapt.augment import AdaptiveAugment, augment
from fsg_ray.adapt.loop import Adaptation, SingleProcess, new_adaptation
from fsg_ray.adapt.methods import METHODS
from fsg_ray.config import AugmentConfig, ConfigError, config_to_dict, load_config

alone = SingleProcess().total


def with_peer(peer_sign_sum: float, peer_images: int):
    """`total` of two workers, the other one having seen `peer_images` reals with this sign sum per adjustment."""
    return lambda values: values + torch.tensor([peer_sign_sum, peer_images], dtype=values.dtype)


def tiny_run(*overrides: str) -> Adaptation:
    return new_adaptation(tiny_source(), tiny_targets(), load_config(None, ["steps=8", *overrides]))


def test_controller_raises_p_while_d_is_overconfident_on_the_reals():
    control = AdaptiveAugment(AugmentConfig())
    for _ in range(8):
        control.observe_real_logits(torch.ones(4, 1), alone)
    assert control.p == pytest.approx(2 * 16 / 10_000)  # two adjustments of 4 steps x 4 images, 10 kimg per unit


def test_controller_lowers_p_while_d_is_below_the_target():
    control = AdaptiveAugment(AugmentConfig())
    control.p = 0.5
    for _ in range(8):
        control.observe_real_logits(torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]), alone)
    assert control.p == pytest.approx(0.5 - 2 * 16 / 10_000)


@pytest.mark.parametrize("peer_sign_sum, direction", [(-16.0, -1), (16.0, 1)])
def test_controller_adjusts_p_from_the_global_batch_of_all_workers(peer_sign_sum: float, direction: int):
    control = AdaptiveAugment(AugmentConfig())
    control.p = 0.5
    for _ in range(4):
        # This worker's 16 reals all score positive (r_t = 1 alone); the peer's 16 decide the global r_t.
        control.observe_real_logits(torch.ones(4, 1), with_peer(peer_sign_sum, 16))
    assert control.p == pytest.approx(0.5 + direction * 32 / 10_000)  # 16 images here + 16 on the peer


def test_controller_adjusts_p_once_every_interval_and_keeps_it_in_the_unit_interval():
    control = AdaptiveAugment(AugmentConfig(kimg=0.001))
    for _ in range(3):
        control.observe_real_logits(torch.ones(4, 1), alone)
    assert control.p == 0.0
    control.observe_real_logits(torch.ones(4, 1), alone)
    assert control.p == 1.0


def test_controller_averages_patch_signs_per_image():
    control = AdaptiveAugment(AugmentConfig(interval=1, kimg=0.001, target=0.4))
    patches = torch.tensor([1.0, 1.0, 1.0, -1.0]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)  # each image: mean sign 0.5
    control.observe_real_logits(patches, alone)
    assert control.p == 1.0  # r_t = 0.5 > 0.4


def test_augmentation_is_the_identity_at_p_zero():
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(augment(x, 0.0), x)


def test_augmentation_changes_images_and_is_differentiable():
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    torch.manual_seed(0)
    y = augment(x, 1.0)
    y.square().sum().backward()
    assert not torch.equal(y, x)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_augmentation_is_off_by_default():
    assert tiny_run().augment is None


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"ada"}))
def test_augment_enabled_augments_every_image_the_discriminator_sees_for_any_method(method: str, monkeypatch):
    run = tiny_run(f"method={method}", "augment.enabled=true", "baselines.ewc_samples=4", "baselines.freeze_d_blocks=2", "adam.probe_steps=1", "adam.fisher_batches=1")
    seen = []
    monkeypatch.setattr(augment_module, "augment", lambda images, p: seen.append(images.shape[0]) or augment(images, p))
    run.train_step()  # step 0: D on reals and fakes, R1 on reals, G on fakes
    assert seen == [4, 4, 4, 4]


def test_cdc_with_augmentation_adjusts_p_and_resumes_it_exactly():
    def started(p: float) -> Adaptation:
        run = tiny_run("augment.enabled=true", "augment.interval=1", "augment.kimg=0.01")
        run.augment.p = p
        return run

    straight = started(0.5)
    for _ in range(3):
        straight.train_step()
    first = started(0.5)
    first.train_step()
    resumed = started(0.0)
    resumed.restore(first.checkpoint("tiny", "random"))
    for _ in range(2):
        resumed.train_step()
    assert resumed.augment.state_dict() == straight.augment.state_dict() and straight.augment.p != 0.5
    assert all(torch.equal(a, b) for a, b in zip(straight.nets.g.parameters(), resumed.nets.g.parameters()))


def test_augment_settings_are_config_fields_reachable_by_set():
    config = load_config(None, ["augment.enabled=true", "augment.target=0.5", "augment.interval=2", "augment.kimg=100"])
    assert config_to_dict(config)["augment"] == {"enabled": True, "target": 0.5, "interval": 2, "kimg": 100.0}


@pytest.mark.parametrize(
    ("override", "message"),
    [("augment.target=1.5", "augment.target: expected a value in [0, 1], got 1.5"), ("augment.interval=0", "augment.interval"), ("augment.kimg=0", "augment.kimg")],
)
def test_bad_augment_settings_are_rejected_naming_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])
