"""AdAM against its reference code (yunqing-me/RICK: model_adam.py, AdAM_importance_probing.py, AdAM_main_adaptation.py).

The reference's key computations are transcribed here, in its own terms (u_vector / v_vector / b_vector
names, numpy percentiles, gradients zeroed after backward, one Adam over all parameters) and compared with
fsg-ray's on a tiny model: the modulated forward, the Fisher estimates, the chosen kernels, which
parameters receive gradient, one optimiser step. A wrong quantile or a swapped mask must make them fail.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import TINY, tiny_source, tiny_targets, write_tiny_source

from fsg_ray import load_generator
from fsg_ray.adapt import probe as probe_module
from fsg_ray.adapt.kernel_modulation import KernelModulation, discriminator_sites, generator_sites
from fsg_ray.adapt.loop import Adaptation, init_networks, new_adaptation, set_requires_grad
from fsg_ray.adapt.methods import adam
from fsg_ray.adapt.probe_artifact import PROBE_FILE, probe_digest
from fsg_ray.cli import main
from fsg_ray.config import ConfigError, load_config
from fsg_ray.nets.checkpoints import build_discriminator, build_generator, load_state_strict
from fsg_ray.nets.stylegan2 import Generator

SMALL = ["method=adam", "adam.probe_steps=2", "adam.fisher_batches=1", "steps=8"]


def config(*overrides: str):
    return load_config(None, [*SMALL, *overrides])


def random_fisher(g, d, seed: int = 5) -> dict[str, Any]:
    """A probe with distinct random Fisher values (no ties at the cut), in place of a probing run."""
    rng = torch.Generator().manual_seed(seed)
    g_vec = KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).vectors
    d_vec = KernelModulation(d, discriminator_sites(d), torch.Generator().manual_seed(0)).vectors
    return {"fisher_g": {k: torch.rand(v.shape, generator=rng) for k, v in g_vec.items()}, "fisher_d": {k: torch.rand(v.shape, generator=rng) for k, v in d_vec.items()}}


def run_with_probe(probe: dict[str, Any], *overrides: str) -> Adaptation:
    source, targets = tiny_source(), tiny_targets()
    method = adam.AdAM(config(*overrides))
    method.probe = probe
    return Adaptation(init_networks(source), targets, method.config, None, method)


def ref_name(key: str) -> str:
    """fsg-ray's `<parameter>:<u|v|b>` -> the reference's name of that modulation vector."""
    name, _, suffix = key.rpartition(":")
    vector = {"u": "u_vector", "v": "v_vector", "b": "b_vector"}[suffix]
    if name.startswith("style."):
        return f"kml_fc.{name.split('.')[1]}.{vector}"
    if ".modulation." in name:
        return f"{name.split('.modulation.')[0]}.kml_fc.{vector}"
    return f"{name.rsplit('.', 1)[0]}.{vector}"


# --- the reference, transcribed ---------------------------------------------------------------------


def ref_kml_fc(x, weight, bias, u, v, lr_mul=1.0, activation=False):
    """model_adam.KML_fc.forward: weight * (1 + ger(v, u)), scaled by lr_mul / sqrt(out_dim)."""
    scale = (1 / math.sqrt(v.shape[0])) * lr_mul
    w = weight * (torch.ones_like(weight) + torch.ger(v, u).view(weight.shape))
    if activation:
        return F.leaky_relu(F.linear(x, w * scale) + (bias * lr_mul), 0.2) * math.sqrt(2)
    return F.linear(x, w * scale, bias=bias * lr_mul)


def ref_modulated_conv(conv, x, style, u, v, fc_u, fc_v, fc_b):
    """model_adam.ModulatedConv2d_kml.forward (no up/down-sampling)."""
    batch, in_channel, height, width = x.shape
    s = ref_kml_fc(style, conv.modulation.weight, conv.modulation.bias + fc_b, fc_u, fc_v).view(batch, 1, in_channel, 1, 1)
    weight_hat = torch.ger(u, v).view(1, conv.out_ch, conv.in_ch, conv.kernel_size, conv.kernel_size)
    weight = conv.weight * (torch.ones_like(conv.weight) + weight_hat)
    weight = conv.scale * weight * s
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(batch, conv.out_ch, 1, 1, 1)
    weight = weight.view(batch * conv.out_ch, in_channel, conv.kernel_size, conv.kernel_size)
    out = F.conv2d(x.view(1, batch * in_channel, height, width), weight, padding=conv.kernel_size // 2, groups=batch)
    return out.view(batch, conv.out_ch, *out.shape[2:])


def ref_fisher(g, d, vectors_g, vectors_d, targets, samples: int, seed: int):
    """AdAM_importance_probing.calculate_fisher + estimate_fisher: per image, squared gradients of the G loss
    softplus(-D(G(z))) and of the D loss on one real and that fake, summed, divided by the number of images."""
    fisher_g, fisher_d = {}, {}
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for j in range(samples):
            z = torch.randn(1, g.style_dim, generator=rng)
            real = targets.sample(1, rng)
            fake_pred = d(g([z], noise="random"))
            real_pred = d(real)
            g_loss = F.softplus(-fake_pred).mean()
            d_loss = F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()
            g_grads = torch.autograd.grad(g_loss, list(vectors_g.values()), retain_graph=True)
            d_grads = torch.autograd.grad(d_loss, list(vectors_d.values()))
            for store, names, grads in ((fisher_g, vectors_g, g_grads), (fisher_d, vectors_d, d_grads)):
                for name, grad in zip(names, grads):
                    store[name] = grad.detach() ** 2 if j == 0 else store[name] + grad.detach() ** 2
    return {k: v / samples for k, v in fisher_g.items()}, {k: v / samples for k, v in fisher_d.items()}


def ref_decisions(filter_fisher_g: dict[str, np.ndarray], filter_fisher_d: dict[str, np.ndarray], n_convs: int, n_blocks: int, quantile: float):
    """AdAM_main_adaptation.py step 3, with `range(12)` / `range(1, 7)` (256 px) as the tiny model's counts."""
    grouped_conv, grouped_fc = [], []
    for i in range(n_convs):
        grouped_conv = np.concatenate((grouped_conv, filter_fisher_g[f"convs.{i}.conv.u_vector"].mean() + filter_fisher_g[f"convs.{i}.conv.v_vector"]), axis=None)
        fc = (filter_fisher_g[f"convs.{i}.conv.kml_fc.u_vector"].mean() + filter_fisher_g[f"convs.{i}.conv.kml_fc.v_vector"] + filter_fisher_g[f"convs.{i}.conv.kml_fc.b_vector"]) / 2
        grouped_fc = np.concatenate((grouped_fc, fc), axis=None)
    cut_conv, cut_fc = np.percentile(grouped_conv, q=quantile), np.percentile(grouped_fc, q=quantile)
    kml_g, ft_g = {}, {}
    for i in range(n_convs):
        fim = filter_fisher_g[f"convs.{i}.conv.u_vector"].mean() + filter_fisher_g[f"convs.{i}.conv.v_vector"]
        kml_g[f"convs.{i}.conv.v_vector"], ft_g[f"convs.{i}.conv.v_vector"] = np.where(fim > cut_conv)[0], np.where(fim <= cut_conv)[0]
        fim = (filter_fisher_g[f"convs.{i}.conv.kml_fc.u_vector"].mean() + filter_fisher_g[f"convs.{i}.conv.kml_fc.v_vector"] + filter_fisher_g[f"convs.{i}.conv.kml_fc.b_vector"]) / 2
        for vec in ("v_vector", "b_vector"):
            kml_g[f"convs.{i}.conv.kml_fc.{vec}"], ft_g[f"convs.{i}.conv.kml_fc.{vec}"] = np.where(fim > cut_fc)[0], np.where(fim <= cut_fc)[0]
    grouped_d, layers = [], []
    for b in range(1, n_blocks + 1):
        for layer in range(2):
            prefix = f"convs.{b}.conv{layer + 1}"
            fim = (filter_fisher_d[f"{prefix}.{layer}.u_vector"].mean() + filter_fisher_d[f"{prefix}.{layer}.v_vector"] + filter_fisher_d[f"{prefix}.{layer + 1}.b_vector"]) / 2
            grouped_d = np.concatenate((grouped_d, fim), axis=None)
            layers.append((f"{prefix}.{layer}.v_vector", f"{prefix}.{layer + 1}.b_vector", fim))
            if layer == 1:
                fim = filter_fisher_d[f"convs.{b}.skip.1.u_vector"].mean() + filter_fisher_d[f"convs.{b}.skip.1.v_vector"]
                grouped_d = np.concatenate((grouped_d, fim), axis=None)
                layers.append((f"convs.{b}.skip.1.v_vector", None, fim))
    cut_d = np.percentile(grouped_d, q=quantile)
    kml_d, ft_d = {}, {}
    for v_name, b_name, fim in layers:
        for name in (v_name, b_name):
            if name is not None:
                kml_d[name], ft_d[name] = np.where(fim > cut_d)[0], np.where(fim <= cut_d)[0]
    return kml_g, ft_g, kml_d, ft_d


def ref_zero_g_grads(named: dict[str, torch.Tensor], kml: dict[str, np.ndarray], ft: dict[str, np.ndarray]) -> None:
    """The G part of the main adaptation's gradient surgery, after backward and before the optimiser step."""
    for name, param in named.items():
        if name in ft:
            param.grad[ft[name]] = 0
    filter_name = []
    for name in named:
        if name in kml:
            if "kml_fc" not in name:
                filter_name.append(name.replace("v_vector", "weight"))
            elif "v_vector" in name:
                filter_name.append(name.replace("v_vector", "weight").replace("kml_fc", "modulation"))
            elif "b_vector" in name:
                filter_name.append(name.replace("b_vector", "bias").replace("kml_fc", "modulation"))
    for name, param in named.items():
        if name in filter_name:
            if "modulation" not in name:
                idx = kml[name.replace("weight", "v_vector")]
                if param.ndim != 5:
                    param.grad[idx] = 0
                else:
                    param.grad[:, idx, :, :, :] = 0
            elif "weight" in name:
                param.grad[kml[name.replace("weight", "v_vector").replace("modulation", "kml_fc")]] = 0
            elif "bias" in name:
                param.grad[kml[name.replace("bias", "b_vector").replace("modulation", "kml_fc")]] = 0
        if "activate.bias" in name or "noise.weight" in name:
            if param.requires_grad and param.grad is not None:
                param.grad *= 0


def ref_zero_d_grads(named: dict[str, torch.Tensor], kml: dict[str, np.ndarray], ft: dict[str, np.ndarray]) -> None:
    for name, param in named.items():
        if name in ft:
            param.grad[ft[name]] = 0
    filter_name = []
    for name in named:
        if name in kml:
            if "v_vector" in name:
                filter_name.append(name.replace("v_vector", "weight"))
            elif "b_vector" in name:
                filter_name.append(name.replace("b_vector", "bias"))
    for name, param in named.items():
        if name in filter_name:
            if "weight" in name:
                param.grad[kml[name.replace("weight", "v_vector")]] = 0
            elif "bias" in name:
                param.grad[kml[name.replace("bias", "b_vector")]] = 0


def reference_networks(probe: dict[str, Any], quantile: float = 50.0):
    """The reference's main-adaptation set-up on the tiny source: fresh vectors (same draws as fsg-ray's), the
    low-Fisher vectors zeroed, `requires_grad` by its name rules, one Adam over every parameter of each net."""
    source, seed = tiny_source(), 0
    g, d = build_generator(source, "g"), build_discriminator(source)
    rng = torch.Generator().manual_seed(seed)
    g_mod = KernelModulation(g, generator_sites(g), rng).attach()
    d_mod = KernelModulation(d, discriminator_sites(d), rng).attach()
    as_np = lambda fisher: {ref_name(k): v.numpy() for k, v in fisher.items()}  # noqa: E731
    kml_g, ft_g, kml_d, ft_d = ref_decisions(as_np(probe["fisher_g"]), as_np(probe["fisher_d"]), len(g.convs), len(d.convs) - 1, quantile)
    named_g = dict(g.named_parameters()) | {ref_name(k): v for k, v in g_mod.vectors.items()}
    named_d = dict(d.named_parameters()) | {ref_name(k): v for k, v in d_mod.vectors.items()}
    with torch.no_grad():
        for named, ft in ((named_g, ft_g), (named_d, ft_d)):
            for name, param in named.items():
                if name in ft:
                    param[ft[name]] = 0
    for name, p in named_g.items():
        p.requires_grad_(any(k in name for k in ("u_vector", "v_vector", "b_vector", "convs")))
    for name, p in named_d.items():
        p.requires_grad_(not ("convs.0.0.weight" in name or "convs.0.1.bias" in name))
    return (g, d, named_g, named_d), (kml_g, ft_g, kml_d, ft_d)


def g_loss(g: Generator) -> torch.Tensor:
    z = torch.randn(4, g.style_dim, generator=torch.Generator().manual_seed(11))
    return g(z, noise="const").square().mean()


def d_loss(d) -> torch.Tensor:
    images = torch.rand(4, 3, TINY.size, TINY.size, generator=torch.Generator().manual_seed(12)) * 2 - 1
    return F.softplus(d(images)).mean()


def reference_steps(probe: dict[str, Any], quantile: float = 50.0) -> dict[str, dict[str, torch.Tensor]]:
    """One G and one D optimiser step of the reference on fixed losses; the parameters after them, by reference name."""
    (g, d, named_g, named_d), (kml_g, ft_g, kml_d, ft_d) = reference_networks(probe, quantile)
    for net, named, loss, zero, kml, ft, reg_every in ((g, named_g, g_loss, ref_zero_g_grads, kml_g, ft_g, 4), (d, named_d, d_loss, ref_zero_d_grads, kml_d, ft_d, 16)):
        ratio = reg_every / (reg_every + 1)
        optim = torch.optim.Adam(list(named.values()), lr=0.002 * ratio, betas=(0**ratio, 0.99**ratio))
        optim.zero_grad(set_to_none=False)
        loss(net).backward()
        zero(named, kml, ft)
        optim.step()
    return {"g": {k: v.detach().clone() for k, v in named_g.items()}, "d": {k: v.detach().clone() for k, v in named_d.items()}}


def fsg_steps(probe: dict[str, Any], *overrides: str) -> dict[str, dict[str, torch.Tensor]]:
    """The same two steps through fsg-ray's AdAM: its parameter groups, gradient gates and optimisers."""
    run = run_with_probe(probe, *overrides)
    method = run.method
    for net, params, optim, loss in ((run.nets.g, run.g_params, run.g_optim, g_loss), (run.nets.d, run.d_params, run.d_optim, d_loss)):
        set_requires_grad(params, True)
        optim.zero_grad(set_to_none=False)
        loss(net).backward()
        optim.step()
    named_g = dict(run.nets.g.named_parameters()) | {ref_name(k): v for k, v in method.g.vectors.items()}
    named_d = dict(run.nets.d.named_parameters()) | {ref_name(k): v for k, v in method.d.vectors.items()}
    return {"g": {k: v.detach().clone() for k, v in named_g.items()}, "d": {k: v.detach().clone() for k, v in named_d.items()}}


def largest_gap(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> float:
    assert a.keys() == b.keys() and all(a[n].keys() == b[n].keys() for n in a)
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    source = tiny_source()
    return random_fisher(build_generator(source, "g"), build_discriminator(source))


# --- the modulated forward ---------------------------------------------------------------------------


def perturbed(mod: KernelModulation, seed: int = 3) -> KernelModulation:
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in mod.vectors.values():
            v.copy_(torch.randn(v.shape, generator=rng) * 0.3)
    return mod


def test_a_modulated_styled_conv_computes_the_reference_kml_conv():
    g = Generator(TINY)
    mod = perturbed(KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).attach())
    conv = g.convs[1].conv  # in 8, out 8: no upsampling
    x, style = torch.randn(2, conv.in_ch, 8, 8), torch.randn(2, TINY.style_dim)
    vec = {k.split(":")[0].removeprefix("convs.1.conv.") + ":" + k.split(":")[1]: v for k, v in mod.vectors.items() if k.startswith("convs.1.conv.")}
    expected = ref_modulated_conv(conv, x, style, vec["weight:u"], vec["weight:v"], vec["modulation.weight:u"], vec["modulation.weight:v"], vec["modulation.bias:b"])
    torch.testing.assert_close(conv(x, style), expected, rtol=1e-5, atol=1e-6)


def test_the_modulated_mapping_and_d_convs_compute_the_reference_kml_layers():
    g = Generator(TINY)
    mod = perturbed(KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).attach())
    layer, x = g.style[1], torch.randn(3, TINY.style_dim)
    expected = ref_kml_fc(x, layer.weight, layer.bias + mod.vectors["style.1.bias:b"], mod.vectors["style.1.weight:u"], mod.vectors["style.1.weight:v"], lr_mul=layer.lr_mul, activation=True)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    source = tiny_source()
    d = build_discriminator(source)
    d_mod = perturbed(KernelModulation(d, discriminator_sites(d), torch.Generator().manual_seed(0)).attach())
    conv, x = d.convs[1].conv1[0], torch.randn(2, d.convs[1].conv1[0].weight.shape[1], 16, 16)
    u, v = d_mod.vectors["convs.1.conv1.0.weight:u"], d_mod.vectors["convs.1.conv1.0.weight:v"]
    out, fan_in, k = conv.weight.shape[0], conv.weight.shape[1], conv.weight.shape[2]
    weight = conv.weight * (torch.ones_like(conv.weight) + torch.ger(u, v).view(out, fan_in, k, k))  # EqualConv2d_kml.forward
    torch.testing.assert_close(conv(x), F.conv2d(x, weight * conv.scale, padding=conv.padding), rtol=1e-5, atol=1e-6)


def test_a_folded_generator_draws_the_same_images_as_the_modulated_one_bit_for_bit():
    g = Generator(TINY)
    mod = perturbed(KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).attach())
    plain = Generator(TINY)
    load_state_strict(plain, mod.folded(), "folded")
    z = torch.randn(4, TINY.style_dim)
    assert torch.equal(plain(z, noise="const"), g(z, noise="const"))


def test_fresh_modulation_leaves_the_source_generator_unchanged_but_for_the_reference_scale_of_style_affines():
    source = tiny_source()
    g, plain = build_generator(source, "g"), build_generator(source, "g")
    mod = KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).attach()
    with torch.no_grad():
        for v in mod.vectors.values():
            v.zero_()
    folded = mod.folded()
    # The reference's KML_fc scales by 1/sqrt(out) where the affine scales by 1/sqrt(in) (TINY: 16 in, 8 out).
    affine = "convs.1.conv.modulation.weight"
    torch.testing.assert_close(folded[affine], plain.state_dict()[affine] * math.sqrt(16 / 8))
    assert all(torch.equal(folded[k], v) for k, v in plain.state_dict().items() if ".modulation.weight" not in k)


# --- the probe --------------------------------------------------------------------------------------


def test_fisher_estimates_match_the_reference_per_image_squared_gradients():
    source, targets = tiny_source(), tiny_targets()
    g, d = build_generator(source, "g_ema"), build_discriminator(source)
    g_mod = perturbed(KernelModulation(g, generator_sites(g), torch.Generator().manual_seed(0)).attach(), 1)
    d_mod = perturbed(KernelModulation(d, discriminator_sites(d), torch.Generator().manual_seed(0)).attach(), 2)
    ours_g, ours_d = probe_module.fisher_information(g, d, g_mod, d_mod, targets, samples=3, seed=4)
    ref_g, ref_d = ref_fisher(g, d, g_mod.vectors, d_mod.vectors, targets, samples=3, seed=4)
    for ours, ref in ((ours_g, ref_g), (ours_d, ref_d)):
        assert ours.keys() == ref.keys()
        for k in ours:
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-12, msg=k)
    assert all(ours_g[k].sum() > 0 for k in ours_g if k.startswith("convs.")) and all(f.sum() > 0 for f in ours_d.values())


def test_the_probe_trains_only_modulation_vectors_and_d_final_layers(monkeypatch):
    seen = {}
    real_fisher = probe_module.fisher_information

    def spy(g, d, g_mod, d_mod, *args):
        seen["g_ema"], seen["d_ema"] = dict(g_mod.vectors), dict(d_mod.vectors)
        return real_fisher(g, d, g_mod, d_mod, *args)

    monkeypatch.setattr(probe_module, "fisher_information", spy)
    source = tiny_source()
    result = probe_module.run_probe(source, tiny_targets(), config("adam.probe_steps=3"))
    assert set(result["fisher_g"]) == set(seen["g_ema"]) and set(result["fisher_d"]) == set(seen["d_ema"])
    # After 3 steps the averaged vectors have moved off their ~1e-7 start: the probing run trained them.
    assert max(v.abs().max().item() for v in seen["g_ema"].values()) > 1e-5


# --- the chosen kernels -----------------------------------------------------------------------------


def chosen_by_reference(probe: dict[str, Any], quantile: float) -> dict[str, np.ndarray]:
    source = tiny_source()
    g, d = build_generator(source, "g"), build_discriminator(source)
    as_np = lambda fisher: {ref_name(k): v.numpy() for k, v in fisher.items()}  # noqa: E731
    kml_g, _, kml_d, _ = ref_decisions(as_np(probe["fisher_g"]), as_np(probe["fisher_d"]), len(g.convs), len(d.convs) - 1, quantile)
    return kml_g | kml_d


def chosen_by_fsg(probe: dict[str, Any], quantile: float) -> dict[str, np.ndarray]:
    source = tiny_source()
    g, d = build_generator(source, "g"), build_discriminator(source)
    important = adam.important_kernels(adam.kernel_scores(probe["fisher_g"], probe["fisher_d"], g, d), quantile)
    chosen = {}
    for name, mask in important.items():
        index = mask.nonzero().flatten().numpy()
        chosen[ref_name(f"{name}:v")] = index
        if ".modulation." in name:
            chosen[ref_name(f"{name.replace('.weight', '.bias')}:b")] = index
    for weight, bias in adam.d_layers(d):
        if bias is not None:
            chosen[ref_name(f"{bias}:b")] = chosen[ref_name(f"{weight}:v")]
    return chosen


def same_choice(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("quantile", [50.0, 75.0])
def test_the_chosen_kernels_are_the_references(probe, quantile):
    assert same_choice(chosen_by_fsg(probe, quantile), chosen_by_reference(probe, quantile))


def test_a_wrong_quantile_chooses_other_kernels_than_the_reference(probe):
    assert not same_choice(chosen_by_fsg(probe, 60.0), chosen_by_reference(probe, 50.0))


# --- gradients and one optimiser step ------------------------------------------------------------------


def test_one_g_and_one_d_step_equal_the_references(probe):
    assert largest_gap(fsg_steps(probe), reference_steps(probe)) < 1e-6


def test_a_swapped_mask_or_a_wrong_quantile_breaks_the_step_comparison(probe, monkeypatch):
    assert largest_gap(fsg_steps(probe, "adam.quantile=75"), reference_steps(probe)) > 1e-4
    chosen = adam.important_kernels
    monkeypatch.setattr(adam, "important_kernels", lambda scores, q: {k: ~v for k, v in chosen(scores, q).items()})
    assert largest_gap(fsg_steps(probe), reference_steps(probe)) > 1e-4


def test_important_kernels_keep_their_weights_and_the_others_keep_a_zero_modulation(probe):
    run = run_with_probe(probe)
    before = {k: v.detach().clone() for k, v in run.nets.g.named_parameters()}
    for _ in range(3):
        run.train_step()
    after, important, vec = dict(run.nets.g.named_parameters()), run.method.important, run.method.g.vectors
    kernels = important["convs.0.conv.weight"]
    assert kernels.any() and (~kernels).any()
    assert torch.equal(after["convs.0.conv.weight"][:, kernels], before["convs.0.conv.weight"][:, kernels])
    assert not torch.equal(after["convs.0.conv.weight"][:, ~kernels], before["convs.0.conv.weight"][:, ~kernels])
    assert torch.all(vec["convs.0.conv.weight:v"][~kernels] == 0) and torch.all(vec["convs.0.conv.weight:v"][kernels] != 0)
    frozen = [k for k in before if not k.startswith("convs.") or k.endswith(("noise.weight", "activate.bias"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


def test_g_ema_follows_the_folded_modulated_generator(probe):
    run = run_with_probe(probe, "optim.ema_decay=0")
    run.train_step()
    folded = run.method.g.folded()
    assert all(torch.equal(p, folded[k]) for k, p in run.nets.g_ema.named_parameters())


# --- the probe as an artifact of the run, resume, export ---------------------------------------------------


def adapt(source: str, out: Path, steps: int, *extra: str) -> int:
    args = ["adapt", "--source", source, "--target", "toy:sketch", "--out", str(out), "--steps", str(steps), "--method", "adam", "--quiet"]
    return main([*args, "--set", "adam.probe_steps=2", "--set", "adam.fisher_batches=1", "--set", "checkpoint_every=2", "--set", "sample_every=2", *extra])


def test_the_probe_is_stored_with_the_run_and_reused_when_it_continues(tmp_path: Path, monkeypatch):
    source = write_tiny_source(tmp_path / "source.pt")
    assert adapt(source, tmp_path / "run", 2) == 0
    stored = (tmp_path / "run" / PROBE_FILE).read_bytes()
    monkeypatch.setattr(probe_module, "run_probe", lambda *a: pytest.fail("probed again"))
    assert adapt(source, tmp_path / "run", 4) == 0
    assert (tmp_path / "run" / PROBE_FILE).read_bytes() == stored
    ckpt = torch.load(tmp_path / "run" / "checkpoint_000004" / "state.pt", weights_only=True)
    assert ckpt["method_state"]["probe_sha256"] == probe_digest(torch.load(tmp_path / "run" / PROBE_FILE, weights_only=True))


def test_a_probe_from_another_source_or_other_settings_is_refused_naming_the_difference(tmp_path: Path, capsys):
    assert adapt(write_tiny_source(tmp_path / "source.pt"), tmp_path / "run", 2) == 0
    other = write_tiny_source(tmp_path / "other.pt", seed=1)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / PROBE_FILE).write_bytes((tmp_path / "run" / PROBE_FILE).read_bytes())
    assert adapt(other, tmp_path / "elsewhere", 2) == 2
    assert "probe.pt: made from another source" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint_000002").rename(tmp_path / "moved")  # the run's probe alone, without its checkpoint
    assert adapt(str(tmp_path / "source.pt"), tmp_path / "run", 2, "--set", "adam.probe_steps=3") == 2
    assert "probe.pt: made with adam.probe_steps=2, this run has adam.probe_steps=3" in capsys.readouterr().err


def test_an_adam_run_exports_a_plain_stylegan2_that_loads_strictly(tmp_path: Path):
    assert adapt(write_tiny_source(tmp_path / "source.pt"), tmp_path / "run", 2) == 0
    exported = torch.load(tmp_path / "run" / "generator.pt", weights_only=True)
    plain = Generator(TINY)
    load_state_strict(plain, exported["g_ema"], "generator.pt[g_ema]")  # the field's keys, no modulation vectors
    z = torch.randn(2, TINY.style_dim)
    assert torch.equal(load_generator(str(tmp_path / "run"))(z, noise="const"), plain(z, noise="const"))
    assert not torch.equal(plain(z, noise="const"), load_generator(str(tmp_path / "source.pt"))(z, noise="const"))
    assert main(["sample", "--generator", str(tmp_path / "run"), "--seeds", "0-3", "--out", str(tmp_path / "grid.png")]) == 0


@pytest.mark.parametrize(("override", "message"), [("adam.quantile=101", "adam.quantile: expected a percentile in [0, 100], got 101"), ("adam.fisher_batches=0", "adam.fisher_batches"), ("adam.probe_steps=-1", "adam.probe_steps")])
def test_bad_adam_settings_are_refused_naming_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_new_adaptation_probes_first_and_the_probe_fits_the_run():
    run = new_adaptation(tiny_source(), tiny_targets(), config())
    assert run.method.probe["settings"]["adam.probe_steps"] == 2


def test_checkpoints_hold_the_adapted_g_and_d_folded_into_plain_weights(probe):
    run = run_with_probe(probe)
    for _ in range(2):
        run.train_step()
    ckpt = run.checkpoint("tiny", "random")
    source = {**tiny_source(), **{k: ckpt[k] for k in ("g", "d")}}
    g, d = build_generator(source, "g"), build_discriminator(source)
    z, images = torch.randn(2, TINY.style_dim), torch.rand(4, 3, TINY.size, TINY.size)
    with torch.no_grad():
        assert torch.equal(g(z, noise="const"), run.nets.g(z, noise="const"))
        assert torch.equal(d(images), run.nets.d(images))


def test_probing_is_reproducible_and_leaves_the_callers_random_state_alone():
    source, targets = tiny_source(), tiny_targets()
    torch.manual_seed(123)
    first = probe_module.run_probe(source, targets, config())
    after_probe = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_probe, torch.rand(3))
    second = probe_module.run_probe(source, targets, config())
    assert probe_digest(first) == probe_digest(second)
