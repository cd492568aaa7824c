"""Cross-domain distance consistency loss L_dist (Ojha et al. 2021, Eq. 2; SPEC.md §2).

For N latents z_1..z_N pushed through the frozen source G_s and the adapted G_t, row i of the
similarity distribution at layer l is

    y_i^l = softmax_{j != i}( cos( G^l(z_i), G^l(z_j) ) )          (N-1 numbers per row)

and the loss keeps the target's rows close to the source's:

    official (default, the reference code):  sum_i KL( y_i^{s,l_i} || y_i^{t,l_i} ) / (N (N-1)),
                                             l_i drawn uniformly from {1, ..., n_latent - 2}
    paper (Eq. 2):                           sum_l sum_i KL( y_i^{t,l} || y_i^{s,l} ) / (L N (N-1)),
                                             over all L layers {1, ..., n_latent - 2}

Eq. 2 prints no normalisation; without one the paper form is L N (N-1) times the official loss's scale
(144 at 256 px, batch 4), so the shared weight lambda = 1000 would not fit it. Normalised, it is the
official loss averaged over the layer draw, with the paper's KL direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity_distributions(features: Tensor) -> Tensor:
    """Row-wise softmax of cosine similarities to the other samples: [N, ...] -> [N, N-1].

    Each sample's whole C*H*W map is one vector (no pooling), as in the reference code. Cosines come from
    unit vectors and one matrix product: pairwise `cosine_similarity` would broadcast an [N, N, C*H*W]
    tensor (gigabytes for one 256 px layer at N = 4) for the same numbers.
    """
    flat = F.normalize(features.flatten(1), dim=1)
    n = flat.shape[0]
    cosine = flat @ flat.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=flat.device)
    return F.softmax(cosine[off_diagonal].view(n, n - 1), dim=1)


def _kl_rows(p: Tensor, q: Tensor) -> Tensor:
    """Elementwise p * (log p - log q): summing a row gives KL(p_row || q_row)."""
    return F.kl_div(q.log(), p, reduction="none")


def cdc_loss_official(source_features: list[Tensor], target_features: list[Tensor], layers: Tensor) -> Tensor:
    """Row i compares samples at its own layer `layers[i]`; KL(P_s || P_t) averaged over N(N-1) entries."""
    n = layers.shape[0]
    terms = []
    for layer in layers.unique().tolist():
        rows = (layers == layer).nonzero().flatten()
        p_source = similarity_distributions(source_features[layer])[rows]
        p_target = similarity_distributions(target_features[layer])[rows]
        terms.append(_kl_rows(p_source, p_target).sum())
    return torch.stack(terms).sum() / (n * (n - 1))


def cdc_loss_paper(source_features: list[Tensor], target_features: list[Tensor], layers: list[int]) -> Tensor:
    """Eq. 2: KL(P_t || P_s) over the given layers and all rows, averaged over L N (N-1) entries."""
    n = source_features[layers[0]].shape[0]
    total = [_kl_rows(similarity_distributions(target_features[l]), similarity_distributions(source_features[l])).sum() for l in layers]
    return torch.stack(total).sum() / (len(layers) * n * (n - 1))


def sample_layers(n: int, n_latent: int, generator: torch.Generator) -> Tensor:
    """One layer per row, uniform over {1, ..., n_latent - 2}: the 4x4 layer is excluded."""
    return torch.randint(1, n_latent - 1, (n,), generator=generator)
