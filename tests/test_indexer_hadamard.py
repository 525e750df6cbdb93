"""The Hadamard-rotated FP8 indexer recipe: exact scores unchanged by the rotation; the FP8 top-k's
agreement with the exact top-k, with and without the rotation, on i.i.d. inputs and on keys with a
few large outlier channels (the figures are printed: run with -s)."""

from __future__ import annotations

import pytest
import torch

from glm52.indexer_rotation import hadamard_matrix, hadamard_rotate
from glm52_ext import ops, reference

S, H, L, K = 16, 32, 8192, 512


def inputs(outlier: float):
    g = torch.Generator().manual_seed(0)
    q, key = torch.randn(S, H, 128, generator=g), torch.randn(L, 128, generator=g)
    channels = [5, 40, 99]
    key[:, channels] = key[:, channels] * 0.1 + outlier  # large near-constant channels (0: none)
    w = torch.randn(S, H, generator=g).abs() * H**-0.5
    return q, key, w


def exact_scores(q, key, w):
    return torch.einsum("sh,sht->st", w, (torch.einsum("shd,td->sht", q, key) * 128**-0.5).relu())


def fp8_topk(q, key, w):
    """DESIGN §2.1's FP8 recipe (q per (token, head) with a ue8m0 scale folded into w, k per token)."""
    q8, q_scale = reference.quant_fp8_per_token_group(q.reshape(-1, 128), 128, scale_ue8m0=True)
    k8, k_scale = reference.quant_fp8_per_token_group(key, 128)
    w = w * q_scale.view(S, H) * 128**-0.5
    ks, ke = torch.zeros(S, dtype=torch.int32), torch.full((S,), L, dtype=torch.int32)
    return ops.indexer_topk(q8.view(S, H, 128), w, k8, k_scale.view(-1), ks, ke, K)


def agreement(got, want) -> float:
    return (got.unsqueeze(-1) == want.unsqueeze(-2)).any(-1).float().mean().item()


def test_hadamard_is_orthogonal_and_keeps_exact_scores():
    h = hadamard_matrix(128)
    torch.testing.assert_close(h @ h, torch.eye(128), atol=1e-6, rtol=0)
    q, key, w = inputs(30.0)
    plain, rotated = exact_scores(q, key, w), exact_scores(hadamard_rotate(q), hadamard_rotate(key), w)
    torch.testing.assert_close(rotated, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(96)


@pytest.mark.parametrize("outlier,plain_min,rotated_range", [
    (0.0, 0.95, (0.95, 1.0)),   # i.i.d.: measured 0.966 plain, 0.967 rotated
    (30.0, 0.94, (0.80, 0.93)),  # offset channels at 30: measured 0.957 plain, 0.887 rotated
    (300.0, 0.93, (0.20, 0.50)),  # at 300: measured 0.947 plain, 0.376 rotated
])
def test_fp8_topk_agreement_with_and_without_rotation(outlier, plain_min, rotated_range):
    q, key, w = inputs(outlier)
    want = reference.topk_indices(exact_scores(q, key, w), K)
    plain = agreement(fp8_topk(q, key, w), want)
    rotated = agreement(fp8_topk(hadamard_rotate(q), hadamard_rotate(key), w), want)
    print(f"outlier {outlier}: FP8 top-{K} agreement with the exact top-{K}: plain {plain:.4f}, rotated {rotated:.4f}")
    assert plain >= plain_min
    assert rotated_range[0] <= rotated <= rotated_range[1]
