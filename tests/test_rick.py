"""RICK against its reference code (yunqing-me/RICK: train_dynamic_update_prune.py, gan_training/models/model_probe_tune.py).

The reference's key computations are transcribed here in its own terms (numpy FIM dicts, np.percentile cuts,
np.where index sets, gradients zeroed and filters set to zero after backward, one Adam over the parameters
its optimisers hold) and compared with fsg-ray's on a tiny model: the importance estimate, the preserved and
pruned filters and the memory of pruned ones, which parameters receive gradient, one optimiser step. A wrong
quantile, a swapped mask or the skip convs' strict cut dropped must make them fail.
"""

import copy
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.cloudpickle
import tiny
import torch
import torch.nn.functional as F
from tiny import TINY, tiny_source, tiny_targets, write_target_folder, write_tiny_source

from fsg_ray import load_generator
from fsg_ray.adapt.loop import Adaptation, new_adaptation, set_requires_grad
from fsg_ray.adapt.methods import rick
from fsg_ray.adapt.probe_artifact import tensors_digest
from fsg_ray.cli import main
from fsg_ray.config import ConfigError, load_config
from fsg_ray.nets.checkpoints import build_discriminator, build_generator, load_state_strict
from fsg_ray.nets.stylegan2 import Generator

# Fidelity runs: the reference trains noise strengths like any weight (fsg-ray's default pulls them to the source).
SMALL = ["method=rick", "noise.strength=learned", "batch=2", "rick.fisher_batches=1", "rick.warmup_steps=1", "rick.fisher_every=2", "rick.prune_quantile=10", "steps=8"]


def config(*overrides: str):
    return load_config(None, [*SMALL, *overrides])


def tiny_run(*overrides: str) -> Adaptation:
    return new_adaptation(tiny_source(), tiny_targets(), config(*overrides))


def train(run: Adaptation, steps: int) -> Adaptation:
    for _ in range(steps):
        run.train_step()
    return run


def random_fisher(seed: int = 5) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Distinct random Fisher values (no ties at the cuts) for every parameter of the tiny G and D."""
    source, rng = tiny_source(), torch.Generator().manual_seed(seed)
    g, d = build_generator(source, "g"), build_discriminator(source)
    return ({k: torch.rand(p.shape, generator=rng) for k, p in g.named_parameters()}, {k: torch.rand(p.shape, generator=rng) for k, p in d.named_parameters()})


# --- the reference, transcribed ---------------------------------------------------------------------


def ref_estimate_fisher(net: torch.nn.Module, loglikelihood: torch.Tensor) -> dict[str, torch.Tensor]:
    """model_probe_tune.{Generator,Discriminator}.estimate_fisher: squared gradients of every parameter."""
    grads = torch.autograd.grad(loglikelihood, list(net.parameters()), retain_graph=True)
    return {n: g.detach() ** 2 for (n, _), g in zip(net.named_parameters(), grads)}


def ref_fisher(g_ema, d_ema, noise_batches: list[torch.Tensor], real_batches: list[torch.Tensor], noise_seed: int):
    """The `fisher_freq` block of train(): per image of each noise file and real batch, G's and D's losses, their
    squared gradients summed in numpy, divided by num_fisher_img * batch."""
    g_ema, d_ema = copy.deepcopy(g_ema).requires_grad_(True), copy.deepcopy(d_ema).requires_grad_(True)
    filter_fisher_g, filter_fisher_d = {}, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(noise_seed)
        for j, (noise_fisher, real_img_fisher) in enumerate(zip(noise_batches, real_batches)):
            for fisher_idx in range(noise_fisher.size()[0]):
                fake_img_fisher = g_ema(noise_fisher[fisher_idx].view(1, -1), noise="random")
                batch_1_real_img = real_img_fisher[fisher_idx].view(1, 3, TINY.size, TINY.size)
                fake_pred_fisher, real_pred_fisher = d_ema(fake_img_fisher), d_ema(batch_1_real_img)
                g_loss_fisher = F.softplus(-fake_pred_fisher).mean()
                d_loss_fisher = F.softplus(-real_pred_fisher).mean() + F.softplus(fake_pred_fisher).mean()
                est_g, est_d = ref_estimate_fisher(g_ema, g_loss_fisher), ref_estimate_fisher(d_ema, d_loss_fisher)
                for store, est in ((filter_fisher_g, est_g), (filter_fisher_d, est_d)):
                    for key in est:
                        if j == 0 and fisher_idx == 0:
                            store[key] = est[key].cpu().numpy()
                        else:
                            store[key] += est[key].cpu().numpy()
    n = len(noise_batches) * real_batches[0].shape[0]
    return {k: v / n for k, v in filter_fisher_g.items()}, {k: v / n for k, v in filter_fisher_d.items()}


def ref_decisions(filter_fisher_g: dict[str, np.ndarray], filter_fisher_d: dict[str, np.ndarray], n_convs: int, n_blocks: int, fisher_quantile: float, prune_quantile: float):
    """The "Screen high FIM Filters" block, with `range(12)` / `range(1, 7)` (256 px) as the tiny model's counts.
    Returns (idx_freeze_g, idx_prune_g, idx_freeze_d, idx_prune_d)."""
    grouped_fim_conv_g, grouped_fim_fc_g = [], []
    for block_idx in range(n_convs):
        grouped_fim_conv_g = np.concatenate((grouped_fim_conv_g, filter_fisher_g[f"convs.{block_idx}.conv.weight"].mean(axis=(0, 2, 3, 4))), axis=None)
        fc_fim = (filter_fisher_g[f"convs.{block_idx}.conv.modulation.weight"].mean(axis=1) + filter_fisher_g[f"convs.{block_idx}.conv.modulation.bias"]) / 2
        grouped_fim_fc_g = np.concatenate((grouped_fim_fc_g, fc_fim), axis=None)
    cutline_g_conv, pruneline_g_conv = np.percentile(grouped_fim_conv_g, q=fisher_quantile), np.percentile(grouped_fim_conv_g, q=prune_quantile)
    cutline_g_fc, pruneline_g_fc = np.percentile(grouped_fim_fc_g, q=fisher_quantile), np.percentile(grouped_fim_fc_g, q=prune_quantile)
    idx_freeze_g, idx_prune_g = {}, {}
    for block_idx in range(n_convs):
        key = f"convs.{block_idx}.conv.weight"
        conv_weight_fim = filter_fisher_g[key].mean(axis=(0, 2, 3, 4))
        idx_freeze_g[key], idx_prune_g[key] = np.where(conv_weight_fim > cutline_g_conv)[0], np.where(conv_weight_fim <= pruneline_g_conv)[0]
        key = f"convs.{block_idx}.conv.modulation.weight"
        fc_fim = (filter_fisher_g[key].mean(axis=1) + filter_fisher_g[key.replace("weight", "bias")]) / 2
        for k in (key, key.replace("weight", "bias")):
            idx_freeze_g[k], idx_prune_g[k] = np.where(fc_fim > cutline_g_fc)[0], np.where(fc_fim <= pruneline_g_fc)[0]
    grouped_fim_conv_d, interest = [], []
    for block_idx in range(1, n_blocks + 1):
        for layer_idx in range(2):
            weight = f"convs.{block_idx}.conv{layer_idx + 1}.{layer_idx}.weight"
            conv_fim = (filter_fisher_d[weight].mean(axis=(1, 2, 3)) + filter_fisher_d[f"convs.{block_idx}.conv{layer_idx + 1}.{layer_idx + 1}.bias"]) / 2
            grouped_fim_conv_d = np.concatenate((grouped_fim_conv_d, conv_fim), axis=None)
            interest.append(weight)
            if layer_idx == 1:
                skip = f"convs.{block_idx}.skip.{layer_idx}.weight"
                grouped_fim_conv_d = np.concatenate((grouped_fim_conv_d, filter_fisher_d[skip].mean(axis=(1, 2, 3))), axis=None)
                interest.append(skip)
    cutline_d_conv, pruneline_d_conv = np.percentile(grouped_fim_conv_d, q=fisher_quantile), np.percentile(grouped_fim_conv_d, q=prune_quantile)
    idx_freeze_d, idx_prune_d = {}, {}
    for key in interest:
        if "skip" not in key:
            bias = key.replace(f"{key[-8]}.weight", f"{int(key[-8]) + 1}.bias")
            conv_fim = (filter_fisher_d[key].mean(axis=(1, 2, 3)) + filter_fisher_d[bias]) / 2
            for k in (key, bias):
                idx_freeze_d[k], idx_prune_d[k] = np.where(conv_fim > cutline_d_conv)[0], np.where(conv_fim <= pruneline_d_conv)[0]
        else:
            conv_skip_fim = filter_fisher_d[key].mean(axis=(1, 2, 3))
            idx_freeze_d[key], idx_prune_d[key] = np.where(conv_skip_fim > cutline_d_conv)[0], np.where(conv_skip_fim < pruneline_d_conv)[0]
    return idx_freeze_g, idx_prune_g, idx_freeze_d, idx_prune_d


def zero_idx_merge(old_zero_dict: dict[str, np.ndarray], new_zero_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.unique(np.concatenate((old_zero_dict[key], new_zero_dict[key]))) for key in old_zero_dict}


def ref_choice(fisher_g, fisher_d, fisher_quantile: float, prune_quantile: float):
    as_np = lambda fisher: {k: v.numpy() for k, v in fisher.items()}  # noqa: E731
    source = tiny_source()
    n_convs, n_blocks = len(build_generator(source, "g").convs), len(build_discriminator(source).convs) - 1
    return ref_decisions(as_np(fisher_g), as_np(fisher_d), n_convs, n_blocks, fisher_quantile, prune_quantile)


def fsg_choice(fisher_g, fisher_d, fisher_quantile: float, prune_quantile: float, units: list | None = None):
    """fsg-ray's masks as the reference's index sets, per parameter (a unit's masks cover all its parameters)."""
    source = tiny_source()
    units = units or rick.g_units(build_generator(source, "g")) + rick.d_units(build_discriminator(source))
    preserved, pruned = rick.decide(rick.filter_scores(fisher_g, fisher_d, units), units, fisher_quantile, prune_quantile)
    return as_indices(preserved, units), as_indices(pruned, units)


def as_indices(masks: dict[str, torch.Tensor], units: list) -> dict[str, np.ndarray]:
    return {name: masks[unit.name].nonzero().flatten().numpy() for unit in units for name, _ in unit.params}


def same_choice(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- the importance estimate -------------------------------------------------------------------------


def test_the_importance_estimate_is_the_references_fisher_of_g_ema_and_d_ema():
    run = train(tiny_run("rick.warmup_steps=0"), 1)  # G_ema and D_ema have moved off the source
    method, n = run.method, len(run.method.fisher_z)
    draw = rick.estimate_seed(run.config.seed, run.step)
    reals = run.targets.sample(n, torch.Generator().manual_seed(draw))
    batches = lambda t: list(t.split(run.config.batch))  # noqa: E731  (the reference's num_fisher_img batches)
    ref_g, ref_d = ref_fisher(run.nets.g_ema, method.d_ema, batches(method.fisher_z), batches(reals), draw)
    ref_scores = {}
    for unit in method.units:
        (weight, axis), *bias = unit.params
        fim = (ref_g if unit.pool.startswith("g") else ref_d)[weight]
        score = fim.mean(axis=tuple(i for i in range(fim.ndim) if i != axis))
        ref_scores[unit.name] = (score + (ref_g if unit.pool.startswith("g") else ref_d)[bias[0][0]]) / 2 if bias else score
    ours = method.estimate(run)
    assert ours.keys() == ref_scores.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name].numpy(), ref_scores[name], rtol=1e-5, atol=1e-14, err_msg=name)
    assert all(s.sum() > 0 for s in ours.values())


# --- the chosen filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fisher_quantile", "prune_quantile"), [(40.0, 0.1), (85.0, 0.075), (75.0, 10.0), (50.0, 50.0)])
def test_the_preserved_and_pruned_filters_are_the_references(fisher_quantile, prune_quantile):
    fisher_g, fisher_d = random_fisher()
    freeze_g, prune_g, freeze_d, prune_d = ref_choice(fisher_g, fisher_d, fisher_quantile, prune_quantile)
    preserved, pruned = fsg_choice(fisher_g, fisher_d, fisher_quantile, prune_quantile)
    assert same_choice(preserved, freeze_g | freeze_d) and same_choice(pruned, prune_g | prune_d)
    assert any(len(v) for v in pruned.values()) and any(len(v) for v in preserved.values())


def test_a_skip_conv_at_the_prune_cut_is_kept_as_the_references_strict_comparison_keeps_it():
    fisher_g, fisher_d = random_fisher()
    fisher_d["convs.1.skip.1.weight"][0] = 1e-9  # the lowest D score, exactly the 0th percentile
    _, _, _, prune_d = ref_choice(fisher_g, fisher_d, 40.0, 0.0)
    _, pruned = fsg_choice(fisher_g, fisher_d, 40.0, 0.0)
    assert 0 not in prune_d["convs.1.skip.1.weight"] and same_choice({k: pruned[k] for k in prune_d}, prune_d)
    source = tiny_source()
    inclusive = [rick.Unit(u.name, u.params, u.pool) for u in rick.g_units(build_generator(source, "g")) + rick.d_units(build_discriminator(source))]
    _, pruned_inclusive = fsg_choice(fisher_g, fisher_d, 40.0, 0.0, inclusive)
    assert not same_choice({k: pruned_inclusive[k] for k in prune_d}, prune_d)


def test_a_wrong_quantile_chooses_other_filters_than_the_reference():
    fisher_g, fisher_d = random_fisher()
    freeze_g, prune_g, freeze_d, prune_d = ref_choice(fisher_g, fisher_d, 40.0, 10.0)
    preserved, pruned = fsg_choice(fisher_g, fisher_d, 45.0, 10.0)
    assert not same_choice(preserved, freeze_g | freeze_d)
    _, pruned = fsg_choice(fisher_g, fisher_d, 40.0, 12.0)
    assert not same_choice(pruned, prune_g | prune_d)


def test_the_pruned_set_only_grows_as_the_references_zero_dicts_merge():
    first, second = random_fisher(5), random_fisher(6)
    run = tiny_run("rick.warmup_steps=0")
    units = run.method.units
    zero = {}
    for i, (fisher_g, fisher_d) in enumerate((first, second)):
        run.method.update(rick.filter_scores(fisher_g, fisher_d, units))
        _, prune_g, _, prune_d = ref_choice(fisher_g, fisher_d, 40.0, 10.0)
        zero = prune_g | prune_d if i == 0 else zero_idx_merge(zero, prune_g | prune_d)
    _, latest = fsg_choice(*second, 40.0, 10.0)
    assert same_choice(as_indices(run.method.pruned, units), zero) and not same_choice(latest, zero)


# --- gradients and one optimiser step ------------------------------------------------------------------


def g_loss(g: Generator) -> torch.Tensor:
    z = torch.randn(4, g.style_dim, generator=torch.Generator().manual_seed(11))
    return g(z, noise="const").square().mean()


def d_loss(d) -> torch.Tensor:
    images = torch.rand(4, 3, TINY.size, TINY.size, generator=torch.Generator().manual_seed(12)) * 2 - 1
    return F.softplus(d(images)).mean()


def reference_step(fisher: tuple[dict, dict], fisher_quantile: float = 40.0, prune_quantile: float = 10.0) -> dict[str, dict[str, torch.Tensor]]:
    """One D and one G step of the reference after its first estimate, on fixed losses: backward, gradient
    surgery, Adam over its optimisers' parameters (G: `convs`; D: `convs` but `convs.0`, and `final`)."""
    source = tiny_source()
    g, d = build_generator(source, "g"), build_discriminator(source)
    idx_freeze_g, zero_filter_idx_g, idx_freeze_d, zero_filter_idx_d = ref_choice(*fisher, fisher_quantile, prune_quantile)
    d_params = [p for n, p in d.named_parameters() if ("convs" in n and "convs.0" not in n) or "final" in n]
    d_optim = torch.optim.Adam(d_params, lr=0.002 * 16 / 17, betas=(0 ** (16 / 17), 0.99 ** (16 / 17)))
    d.zero_grad()
    d_loss(d).backward()
    for name, param in d.named_parameters():
        if name in idx_freeze_d:
            param.grad[idx_freeze_d[name]] = 0
        with torch.no_grad():
            if name in zero_filter_idx_d:
                param[zero_filter_idx_d[name]] = 0
                param.grad[zero_filter_idx_d[name]] = 0
    d_optim.step()
    g_optim = torch.optim.Adam([p for n, p in g.named_parameters() if "convs" in n], lr=0.002 * 4 / 5, betas=(0 ** (4 / 5), 0.99 ** (4 / 5)))
    g.zero_grad()
    g_loss(g).backward()
    for name, param in g.named_parameters():
        if name in idx_freeze_g:
            if param.ndim != 5:
                param.grad[idx_freeze_g[name]] = 0
            else:
                param.grad[:, idx_freeze_g[name], :, :, :] = 0
        with torch.no_grad():
            if name in zero_filter_idx_g:
                if param.ndim != 5:
                    param[zero_filter_idx_g[name]] = 0
                    param.grad[zero_filter_idx_g[name]] = 0
                else:
                    param[:, zero_filter_idx_g[name], :, :, :] = 0
                    param.grad[:, zero_filter_idx_g[name], :, :, :] = 0
    g_optim.step()
    return {"g": {k: v.detach().clone() for k, v in g.named_parameters()}, "d": {k: v.detach().clone() for k, v in d.named_parameters()}}


def fsg_step(fisher: tuple[dict, dict], *overrides: str) -> dict[str, dict[str, torch.Tensor]]:
    """The same two steps through fsg-ray's RICK: its parameter groups, its masks after backward, its optimisers."""
    run = tiny_run("rick.warmup_steps=0", *overrides)
    run.method.update(rick.filter_scores(*fisher, run.method.units))
    for phase, net, params, optim, loss in (("d", run.nets.d, run.d_params, run.d_optim, d_loss), ("g", run.nets.g, run.g_params, run.g_optim, g_loss)):
        set_requires_grad(run.method.phase_parameters(phase, params, run.step), True)
        optim.zero_grad(set_to_none=False)
        loss(net).backward()
        run.method.before_update(params)
        optim.step()
    return {"g": {k: v.detach().clone() for k, v in run.nets.g.named_parameters()}, "d": {k: v.detach().clone() for k, v in run.nets.d.named_parameters()}}


def largest_gap(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> float:
    assert a.keys() == b.keys() and all(a[n].keys() == b[n].keys() for n in a)
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])


@pytest.fixture(scope="module")
def fisher() -> tuple[dict, dict]:
    return random_fisher()


def test_one_d_and_one_g_step_equal_the_references(fisher):
    assert largest_gap(fsg_step(fisher), reference_step(fisher)) < 1e-6


def test_a_swapped_mask_or_a_wrong_quantile_breaks_the_step_comparison(fisher, monkeypatch):
    assert largest_gap(fsg_step(fisher, "rick.freeze_quantile=50"), reference_step(fisher)) > 1e-4
    chosen = rick.decide
    monkeypatch.setattr(rick, "decide", lambda *args: chosen(*args)[::-1])
    assert largest_gap(fsg_step(fisher), reference_step(fisher)) > 1e-4


def test_warm_up_trains_only_d_final_layers_then_preserved_filters_hold_and_pruned_ones_are_zero():
    run = tiny_run("rick.fisher_every=100")
    g0, d0 = ({k: v.detach().clone() for k, v in net.named_parameters()} for net in (run.nets.g, run.nets.d))
    train(run, 1)  # the warm-up step
    g1, d1 = dict(run.nets.g.named_parameters()), dict(run.nets.d.named_parameters())
    assert all(torch.equal(g0[k], g1[k]) for k in g0)
    assert all(torch.equal(d0[k], d1[k]) != k.startswith(("final_conv.", "final_linear.")) for k in d0)
    assert not run.method.preserved
    train(run, 2)  # step 1 estimates, steps 1 and 2 train with its masks
    g2, d2, method = dict(run.nets.g.named_parameters()), dict(run.nets.d.named_parameters()), run.method
    assert all(torch.equal(g0[k], g2[k]) for k in g0 if not k.startswith("convs."))
    assert all(torch.equal(d0[k], d2[k]) for k in d0 if k.startswith("convs.0."))
    for unit in method.units:
        after = g2 if unit.pool.startswith("g") else d2
        before = g0 if unit.pool.startswith("g") else d0
        keep, zero = method.preserved[unit.name], method.pruned[unit.name]
        tuned = ~keep & ~zero
        for name, axis in unit.params:
            assert torch.equal(after[name].index_select(axis, keep.nonzero().flatten()), before[name].index_select(axis, keep.nonzero().flatten())), name
            assert torch.all(after[name].index_select(axis, zero.nonzero().flatten()) == 0), name
            if tuned.any():
                assert not torch.equal(after[name].index_select(axis, tuned.nonzero().flatten()), before[name].index_select(axis, tuned.nonzero().flatten())), name
    assert sum(int(m.sum()) for m in method.pruned.values()) > 0


# --- resume, export, bad input -----------------------------------------------------------------------


def weights_only_roundtrip(ckpt: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resumed_run_equals_a_straight_one_masks_and_d_ema_included():
    straight = train(tiny_run(), 5)  # estimates at steps 1 and 3
    first = train(tiny_run(), 2)
    resumed = tiny_run()
    resumed.restore(weights_only_roundtrip(first.checkpoint("tiny", "random")))
    train(resumed, 3)
    for name in ("g", "g_ema", "d"):
        a, b = getattr(straight.nets, name).state_dict(), getattr(resumed.nets, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert tensors_digest(straight.method.state_dict()) == tensors_digest(resumed.method.state_dict())
    assert any(m.any() for m in straight.method.pruned.values())


def test_a_rick_run_exports_plain_stylegan2_weights_with_pruned_filters_as_zeros(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    argv = ["adapt", "--source", source, "--target", "toy:sketch", "--out", str(tmp_path / "run"), "--steps", "3", "--method", "rick", "--quiet"]
    overrides = ["rick.warmup_steps=1", "rick.fisher_every=1", "rick.fisher_batches=1", "rick.prune_quantile=10", "batch=2", "checkpoint_every=3", "sample_every=3"]
    assert main([*argv, *(a for o in overrides for a in ("--set", o))]) == 0
    exported = torch.load(tmp_path / "run" / "generator.pt", weights_only=True)
    plain = Generator(TINY)
    load_state_strict(plain, exported["g_ema"], "generator.pt[g_ema]")
    z = torch.randn(2, TINY.style_dim)
    assert torch.equal(load_generator(str(tmp_path / "run"))(z, noise="const"), plain(z, noise="const"))
    pruned = torch.load(tmp_path / "run" / "checkpoint_000003" / "state.pt", weights_only=True)["method_state"]["pruned"]
    assert any(m.any() for m in pruned.values())
    for name, mask in pruned.items():
        if name.endswith(".conv.weight"):
            assert torch.all(exported["g"][name][:, mask] == 0), name
    assert main(["sample", "--generator", str(tmp_path / "run"), "--seeds", "0-3", "--out", str(tmp_path / "grid.png")]) == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rick.freeze_quantile=101", "rick.freeze_quantile: expected a percentile in [0, 100], got 101"),
        ("rick.prune_quantile=50", "rick.prune_quantile: 50.0 is above rick.freeze_quantile=40.0"),
        ("rick.fisher_every=0", "rick.fisher_every: expected a positive integer, got 0"),
        ("rick.warmup_steps=-1", "rick.warmup_steps: expected a non-negative integer, got -1"),
        ("rick.fisher_batches=0", "rick.fisher_batches: expected a positive integer, got 0"),
        ("rick.quantile=50", "rick.quantile: unknown key; valid keys: fisher_batches, fisher_every, freeze_quantile, prune_quantile, warmup_steps"),
        ("rick.fisher_every=often", "rick.fisher_every: expected int, got 'often'"),
    ],
)
def test_bad_rick_settings_are_refused_naming_the_key_and_value(override: str, message: str):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value)


def test_bad_rick_settings_to_a_ray_run_are_refused_before_ray_starts(tmp_path: Path, capsys, monkeypatch):
    from fsg_ray.ray import train as ray_train

    monkeypatch.setattr(ray_train, "connect", lambda **_: pytest.fail("Ray was started"))
    argv = ["adapt", "--source", write_tiny_source(tmp_path / "source.pt"), "--target", "toy:sketch", "--out", str(tmp_path / "run"), "--workers", "2", "--quiet"]
    assert main([*argv, "--method", "rick", "--set", "rick.fisher_every=0"]) == 2
    assert "rick.fisher_every: expected a positive integer, got 0" in capsys.readouterr().err


# --- two Ray Train workers -----------------------------------------------------------------------------

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(tiny)


def two_rank_worker(config: dict[str, Any]) -> list[dict[str, str]] | None:
    """The `fsg adapt --workers N` run (run.prepare over a ProcessGroup) for a few steps; every rank's digests."""
    import torch.distributed as dist

    from fsg_ray.adapt.run import RunSpec, prepare
    from fsg_ray.ray.collective import ProcessGroup

    torch.manual_seed(0)
    run = prepare(RunSpec(config["source"], config["target"], load_config(None, config["overrides"])), ProcessGroup())
    train(run, config["steps"])
    mine = {
        "masks": tensors_digest({"preserved": run.method.preserved, "pruned": run.method.pruned, "scores": run.method.scores}),
        "nets": tensors_digest({"g": run.nets.g.state_dict(), "d": run.nets.d.state_dict(), "d_ema": run.method.d_ema.state_dict()}),
        "pruned": str(sum(int(m.sum()) for m in run.method.pruned.values())),
    }
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every if dist.get_rank() == 0 else None


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_two_ray_train_workers_estimate_and_gate_the_same_filters(tmp_path: Path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    source, target = write_tiny_source(tmp_path / "source.pt"), write_target_folder(tmp_path / "target")
    ray.init(address="local", num_cpus=4, object_store_memory=10**9, include_dashboard=False)
    try:
        trainer = TorchTrainer(
            two_rank_worker,
            train_loop_config={"source": source, "target": target, "overrides": [*SMALL, "rick.warmup_steps=0"], "steps": 3},
            scaling_config=ScalingConfig(num_workers=2),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="rick-two-ranks", storage_path=str(tmp_path / "ray")),
        )
        ranks = trainer.fit().return_value
    finally:
        ray.shutdown()
    assert len(ranks) == 2 and ranks[0] == ranks[1] and int(ranks[0]["pruned"]) > 0
