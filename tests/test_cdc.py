"""The cross-domain distance consistency loss against a direct evaluation of its formula."""

import math

import pytest
import torch

from fsg_ray.adapt.cdc import cdc_loss_official, cdc_loss_paper, sample_layers, similarity_distributions


def direct_rows(vectors: list[list[float]]) -> list[list[float]]:
    """softmax_{j != i} cos(v_i, v_j), one python float at a time."""

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    rows = []
    for i, vi in enumerate(vectors):
        sims = [cos(vi, vj) for j, vj in enumerate(vectors) if j != i]
        total = sum(math.exp(s) for s in sims)
        rows.append([math.exp(s) / total for s in sims])
    return rows


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def features(seed: int, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, s, s, generator=g, dtype=torch.float64) for s in (1, 2, 2, 3)]


def test_similarity_rows_are_distributions_over_the_other_samples():
    p = similarity_distributions(torch.randn(5, 3, 2, 2))
    assert p.shape == (5, 4)
    assert torch.allclose(p.sum(dim=1), torch.ones(5))


def test_similarity_matches_direct_softmax_of_cosines():
    f = torch.randn(4, 6, dtype=torch.float64)
    expected = direct_rows(f.tolist())
    assert torch.allclose(similarity_distributions(f), torch.tensor(expected, dtype=torch.float64))


def test_similarity_gives_the_numbers_and_gradients_of_pairwise_cosine_similarity():
    f = torch.randn(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    flat = f.flatten(1)
    pairwise = torch.nn.functional.cosine_similarity(flat[:, None, :], flat[None, :, :], dim=-1)
    expected = torch.softmax(pairwise[~torch.eye(4, dtype=torch.bool)].view(4, 3), dim=1)
    weights = torch.randn(4, 3, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), f)
    actual = similarity_distributions(f)
    (actual_grad,) = torch.autograd.grad((actual * weights).sum(), f)
    assert torch.allclose(actual, expected, rtol=1e-12, atol=0)
    assert torch.allclose(actual_grad, expected_grad, rtol=1e-9, atol=1e-15)


def test_official_loss_is_kl_source_to_target_at_each_rows_layer_over_n_times_n_minus_1():
    source, target = features(0), features(1)
    layers = torch.tensor([1, 3, 1, 2])
    expected = 0.0
    for i, layer in enumerate(layers.tolist()):
        ps = direct_rows(source[layer].flatten(1).tolist())[i]
        pt = direct_rows(target[layer].flatten(1).tolist())[i]
        expected += kl(ps, pt)
    expected /= 4 * 3
    assert cdc_loss_official(source, target, layers).item() == pytest.approx(expected, rel=1e-9)


def test_paper_loss_averages_kl_target_to_source_over_layers_rows_and_pairs():
    source, target = features(2), features(3)
    expected = 0.0
    for layer in (1, 2, 3):
        ps_rows = direct_rows(source[layer].flatten(1).tolist())
        pt_rows = direct_rows(target[layer].flatten(1).tolist())
        expected += sum(kl(pt, ps) for ps, pt in zip(ps_rows, pt_rows))
    expected /= 3 * 4 * 3  # L layers x N rows x (N - 1) entries per row
    assert cdc_loss_paper(source, target, [1, 2, 3]).item() == pytest.approx(expected, rel=1e-9)


def test_paper_loss_is_on_the_official_scale_when_the_kl_is_symmetric():
    source, target = features(7), features(7)
    target[2] = 3.0 * target[2].flip(0)  # samples reversed (an involution): summed over rows, both KL directions agree
    official = torch.stack([cdc_loss_official(source, target, torch.full((4,), layer)) for layer in (1, 2, 3)]).mean()
    assert cdc_loss_paper(source, target, [1, 2, 3]).item() == pytest.approx(official.item(), rel=1e-9)


def test_loss_is_zero_when_target_keeps_the_source_distances():
    source = features(4)
    scaled = [2.5 * f for f in source]  # cosine similarity ignores scale
    assert cdc_loss_official(source, scaled, torch.tensor([1, 2, 3, 1])).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_gradient_flows_to_the_target_only():
    source = [f.requires_grad_() for f in features(5)]
    target = [f.requires_grad_() for f in features(6)]
    cdc_loss_official(source, target, torch.tensor([1, 1, 2, 3])).backward()
    assert target[1].grad is not None and target[1].grad.abs().sum() > 0


def test_sampled_layers_exclude_the_4x4_layer_and_stay_below_the_last_latent():
    layers = sample_layers(10_000, n_latent=14, generator=torch.Generator().manual_seed(0))
    assert layers.min().item() == 1 and layers.max().item() == 12
