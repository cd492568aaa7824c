"""The noise-injection strengths during adaptation: learned, frozen at the source's, or penalised toward them."""

import pytest
import torch
from tiny import tiny_source, tiny_targets

from fsg_ray.adapt.loop import new_adaptation
from fsg_ray.adapt.noise import strength_names
from fsg_ray.config import ConfigError, load_config


def source_with_strengths() -> dict:
    """The tiny source with non-zero strengths, different in `g` and `g_ema`, as a trained model has them."""
    source = tiny_source()
    g, g_ema = dict(source["g"]), dict(source["g_ema"])
    for i, name in enumerate(n for n in g if n.endswith("noise.weight")):
        g[name] = torch.full((1,), 0.01 * (i + 1))
        g_ema[name] = torch.full((1,), 0.02 * (i + 1))
    return {**source, "g": g, "g_ema": g_ema}


def adapted(strength: str, steps: int, *overrides: str):
    run = new_adaptation(source_with_strengths(), tiny_targets(), load_config(None, ["steps=8", f"noise.strength={strength}", *overrides]))
    for _ in range(steps):
        run.train_step()
    return run


def strengths(g) -> torch.Tensor:
    params = dict(g.named_parameters())
    return torch.cat([params[name].detach() for name in strength_names(g)])


def moved(run) -> float:
    return (strengths(run.nets.g) - strengths(run.nets.g_source)).abs().sum().item()


def test_strength_names_are_every_styled_convs_noise_weight():
    g = adapted("learned", 0).nets.g
    assert strength_names(g) == ["conv1.noise.weight"] + [f"convs.{i}.noise.weight" for i in range(len(g.convs))]


@pytest.mark.parametrize("method", ["cdc", "tgan", "ewc"])
def test_frozen_strengths_equal_the_sources_after_training_in_g_and_g_ema(method):
    run = adapted("frozen", 5, f"method={method}")
    source = source_with_strengths()
    assert torch.equal(strengths(run.nets.g), torch.cat([source["g"][n] for n in strength_names(run.nets.g)]))
    assert torch.equal(strengths(run.nets.g_ema), torch.cat([source["g_ema"][n] for n in strength_names(run.nets.g)]))
    assert not torch.equal(run.nets.g.conv1.conv.weight, run.nets.g_source.conv1.conv.weight)  # the rest of G trained


def test_frozen_strengths_are_outside_gs_optimiser():
    run = adapted("frozen", 0)
    frozen = {id(p) for name, p in run.nets.g.named_parameters() if name in strength_names(run.nets.g)}
    assert frozen and not frozen & {id(p) for group in run.g_optim.param_groups for p in group["params"]}


def test_learned_strengths_move():
    assert moved(adapted("learned", 5)) > 0


def test_penalised_strengths_move_less_than_learned():
    learned, penalised = moved(adapted("learned", 12)), moved(adapted("penalised", 12, "noise.weight=10000.0"))
    assert 0 < penalised < learned / 2


def test_the_penalty_is_zero_at_the_source_and_its_weighted_squared_distance_away_from_it():
    run = adapted("penalised", 0, "noise.weight=3")
    assert run.noise.penalty().item() == 0
    with torch.no_grad():
        run.nets.g.conv1.noise.weight.add_(0.5)
        run.nets.g.convs[0].noise.weight.sub_(0.25)
    assert run.noise.penalty().item() == pytest.approx(3 * (0.5**2 + 0.25**2))


def test_methods_that_train_no_g_weight_have_no_strength_to_penalise():
    assert adapted("penalised", 0, "method=bsa").noise.penalty() is None


def test_resuming_a_frozen_run_keeps_the_strengths_frozen_and_reproduces_the_run():
    straight = adapted("frozen", 4)
    first = adapted("frozen", 2)
    ckpt = first.checkpoint("tiny", "targets")
    resumed = adapted("frozen", 0)
    resumed.restore(ckpt)
    for _ in range(2):
        resumed.train_step()
    for name in ("g", "g_ema"):
        assert torch.equal(strengths(getattr(resumed.nets, name)), strengths(getattr(straight.nets, name)))
    assert all(torch.equal(a, b) for a, b in zip(resumed.nets.g.state_dict().values(), straight.nets.g.state_dict().values()))


@pytest.mark.parametrize("override, key", [("noise.strength=sometimes", "noise.strength"), ("noise.weight=-1", "noise.weight")])
def test_an_invalid_noise_setting_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: .*got"):
        load_config(None, [override])
