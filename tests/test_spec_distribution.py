"""Speculative sampling is exact in distribution (DESIGN §4 "Properties"): chi-square tests on small
vocabularies, with and without draft probabilities, of the emitted tokens and the accepted lengths.

Each test runs tens of thousands of independent trials as the rows of one batch (every row has
its own Philox counters). The per-position target p_j and draft q_j do not depend on earlier
tokens here, so the token emitted at position j, whenever it is emitted, must follow p_j; the
number accepted follows the product of the per-position acceptance rates sum_v min(p_j, q_j).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

from glm52_ext import ops

TRIALS = 40000
P_VALUE_FLOOR = 1e-4  # fixed seeds: a pass or a failure is reproducible, never flaky


def chi_square_p_value(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's test of counts against probabilities (cells with expectation < 5 pooled)."""
    counts = counts.double()
    expected = expected_probs.double() * counts.sum()
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), statistic / 2))


def fixed_distributions(vocab, n, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(n + 1, vocab, generator=g) * 1.5, dim=-1)
    draft = torch.softmax(torch.randn(n, vocab, generator=g) * 1.5, dim=-1)
    return target, draft, g


def run_trials(device, target, draft_probs, draft_tokens, seed=2024, offset=1):
    batch = draft_tokens.shape[0]
    p = target[None].expand(batch, -1, -1).contiguous()
    q = None if draft_probs is None else draft_probs[None].expand(batch, -1, -1).contiguous()
    tokens, emitted = ops.spec_verify_sampling(
        draft_tokens.to(device), None if q is None else q.to(device), p.to(device), seed, offset
    )
    return tokens.cpu(), emitted.cpu()


def emitted_token_counts(tokens, emitted, position, vocab):
    rows = emitted > position
    return torch.bincount(tokens[rows, position].long(), minlength=vocab), int(rows.sum())


def accepted_length_probs(alpha: torch.Tensor) -> torch.Tensor:
    """P(num_emitted = m + 1) for m = 0..n with independent per-position acceptance rates alpha."""
    n = alpha.numel()
    survive = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(alpha.double(), 0)])
    return torch.cat([survive[:n] * (1 - alpha.double()), survive[n:]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,n", [(12, 3), (8, 1)])
def test_sampling_with_draft_probs_matches_target(device, vocab, n):
    target, q, g = fixed_distributions(vocab, n, seed=vocab)
    draft = torch.multinomial(q, TRIALS, replacement=True, generator=g).t().contiguous()  # [TRIALS, n]
    tokens, emitted = run_trials(device, target, q, draft)
    for position in range(n + 1):
        counts, rows = emitted_token_counts(tokens, emitted, position, vocab)
        assert rows > 1000
        assert chi_square_p_value(counts, target[position]) > P_VALUE_FLOOR, f"position {position}"
    alpha = torch.minimum(target[:n], q).sum(dim=-1)
    length_counts = torch.bincount(emitted.long() - 1, minlength=n + 1)
    assert chi_square_p_value(length_counts, accepted_length_probs(alpha)) > P_VALUE_FLOOR


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,n", [(16, 3), (10, 2)])
def test_sampling_with_deterministic_draft_matches_target(device, vocab, n):
    """draft_probs = None: each d_j is a fixed token (e.g. the draft's argmax), q one-hot."""
    target, q, g = fixed_distributions(vocab, n, seed=100 + vocab)
    fixed = target[:n].argmax(dim=-1)  # [n]: a draft that agrees with the target most often
    draft = fixed[None].expand(TRIALS, n).contiguous()
    tokens, emitted = run_trials(device, target, None, draft, seed=7, offset=3)
    for position in range(n + 1):
        counts, rows = emitted_token_counts(tokens, emitted, position, vocab)
        assert rows > 500
        assert chi_square_p_value(counts, target[position]) > P_VALUE_FLOOR, f"position {position}"
    alpha = target[torch.arange(n), fixed]
    length_counts = torch.bincount(emitted.long() - 1, minlength=n + 1)
    assert chi_square_p_value(length_counts, accepted_length_probs(alpha)) > P_VALUE_FLOOR


@pytest.mark.parametrize("device", DEVICES)
def test_chi_square_rejects_a_wrong_distribution(device):
    """The test has power: the first tokens do not look like the draft distribution, and a biased
    copy of the target (one token's mass moved by 2%) is rejected."""
    vocab, n = 12, 2
    target, q, g = fixed_distributions(vocab, n, seed=vocab)
    draft = torch.multinomial(q, TRIALS, replacement=True, generator=g).t().contiguous()
    tokens, emitted = run_trials(device, target, q, draft)
    counts, _ = emitted_token_counts(tokens, emitted, 0, vocab)
    assert chi_square_p_value(counts, q[0]) < 1e-10
    biased = target[0].clone()
    biased[0] += 0.02
    biased[1] -= 0.02
    assert chi_square_p_value(counts, biased) < P_VALUE_FLOOR


@pytest.mark.parametrize("device", DEVICES)
def test_bonus_and_residual_uniforms_are_uniform(device):
    """With q = p every draft is accepted, so every row samples the bonus from p_n: a direct test
    of the inverse-CDF sampler and the Philox sample uniforms across 40000 rows and vocab 9."""
    vocab, n = 9, 1
    target, _, g = fixed_distributions(vocab, n, seed=3)
    draft = torch.multinomial(target[:n], TRIALS, replacement=True, generator=g).t().contiguous()
    tokens, emitted = run_trials(device, target, target[:n], draft, seed=99, offset=0)
    assert (emitted == n + 1).all()
    counts, _ = emitted_token_counts(tokens, emitted, n, vocab)
    assert chi_square_p_value(counts, target[n]) > P_VALUE_FLOOR
