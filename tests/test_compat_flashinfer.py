"""glm52_ext.compat.flashinfer.chain_speculative_sampling: FlashInfer's conventions (emitted drafts
without the bonus token, independently accepted positions, in-place counters, −1 padding), its
docstring example, per-request seeds and generators, and exactness in distribution (chi-square)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from test_spec_distribution import P_VALUE_FLOOR, TRIALS, accepted_length_probs, chi_square_p_value, fixed_distributions

from glm52_ext import ops
from glm52_ext.compat import flashinfer
from glm52_ext.reference.spec import DRAW_ACCEPT, philox_uniform


def test_vectorized_philox_equals_the_reference():
    rows = torch.arange(5)[:, None]
    positions = torch.arange(4)[None, :]
    for seed, offset in [(0, 0), (2024, 1), (2**63 + 12345, 2**40 + 7), (2**64 - 1, 2**64 - 1)]:
        got = flashinfer.philox_uniforms(seed, offset, rows, positions, DRAW_ACCEPT)
        want = torch.tensor([[philox_uniform(seed, offset, r, j, DRAW_ACCEPT) for j in range(4)] for r in range(5)])
        assert torch.equal(got, want.float())


def ref_accepted(draft, draft_probs, target_probs, seed, offset):
    """FlashInfer's output_accepted_token_num, transcribed: positions whose draft token passes the
    acceptance test on its own, with the op's accept uniforms."""
    batch, n = draft.shape
    out = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        for j in range(n):
            d = int(draft[b, j])
            p, q = target_probs[b, j, d], draft_probs[b, j, d]
            u = torch.tensor(philox_uniform(seed, offset, b, j, DRAW_ACCEPT), dtype=torch.float32)
            out[b] += bool(p >= q or u * q < p)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_flashinfer_docstring_example(device):
    """FlashInfer's documented example: token 2 accepted (p >= q), token 1 rejected (p = 0) and
    replaced from max(p - q, 0) = one-hot 0, then −1; one accepted, one emitted draft."""
    draft_probs = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.1]]], device=device)
    draft_ids = torch.tensor([[2, 1]], dtype=torch.int32, device=device)
    target = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]], device=device)
    tokens, accepted, emitted = flashinfer.chain_speculative_sampling(draft_probs, draft_ids, target, seed=1, offset=2)
    assert tokens.tolist() == [[2, 0, -1]] and accepted.tolist() == [1] and emitted.tolist() == [1]
    assert tokens.dtype == accepted.dtype == emitted.dtype == torch.int32


@pytest.mark.parametrize("device", DEVICES)
def test_counts_and_tokens_match_the_op(device):
    g = torch.Generator().manual_seed(3)
    batch, n, vocab = 64, 3, 20
    target = torch.softmax(torch.randn(batch, n + 1, vocab, generator=g), dim=-1)
    draft_probs = torch.softmax(torch.randn(batch, n, vocab, generator=g), dim=-1)
    draft = torch.multinomial(draft_probs.view(-1, vocab), 1, generator=g).view(batch, n)
    acc_in = torch.full((batch,), 10, dtype=torch.int32, device=device)
    emit_in = torch.full((batch,), 100, dtype=torch.int32, device=device)
    tokens, accepted, emitted = flashinfer.chain_speculative_sampling(
        draft_probs.to(device), draft.to(device), target.to(device), acc_in, emit_in, seed=7, offset=11)
    want_tokens, want_emitted = ops.spec_verify_sampling(draft, draft_probs, target, 7, 11)
    assert torch.equal(tokens.cpu(), want_tokens)
    assert accepted is acc_in and emitted is emit_in  # added in place, as FlashInfer does
    assert torch.equal(emitted.cpu(), 100 + want_emitted - 1)  # without the bonus token
    assert torch.equal(accepted.cpu(), 10 + ref_accepted(draft, draft_probs, target, 7, 11))
    assert ((accepted.cpu() - 10) >= emitted.cpu() - 100).all()


@pytest.mark.parametrize("device", DEVICES)
def test_per_request_seeds_and_generators(device):
    g = torch.Generator().manual_seed(4)
    batch, n, vocab = 6, 2, 9
    target = torch.softmax(torch.randn(batch, n + 1, vocab, generator=g), dim=-1).to(device)
    draft_probs = torch.softmax(torch.randn(batch, n, vocab, generator=g), dim=-1).to(device)
    draft = torch.randint(0, vocab, (batch, n), generator=g).to(device)
    seeds = torch.arange(100, 100 + batch, dtype=torch.int64, device=device)
    offsets = torch.arange(batch, dtype=torch.int64, device=device) * 3
    tokens, accepted, emitted = flashinfer.chain_speculative_sampling(draft_probs, draft, target, seed=seeds, offset=offsets)
    for b in range(batch):  # request b alone with its own stream gives the same row
        t, a, e = flashinfer.chain_speculative_sampling(draft_probs[b : b + 1], draft[b : b + 1], target[b : b + 1],
                                                        seed=int(seeds[b]), offset=int(offsets[b]))
        assert torch.equal(tokens[b : b + 1], t) and torch.equal(accepted[b : b + 1], a) and torch.equal(emitted[b : b + 1], e)
    one = flashinfer.chain_speculative_sampling(draft_probs, draft, target, seed=torch.tensor([5]), offset=torch.tensor([6]))
    assert all(torch.equal(x, y) for x, y in zip(one, flashinfer.chain_speculative_sampling(draft_probs, draft, target, seed=5, offset=6)))
    gen_a = torch.Generator(device=device).manual_seed(9)
    gen_b = torch.Generator(device=device).manual_seed(9)
    first = flashinfer.chain_speculative_sampling(draft_probs, draft, target, generator=gen_a)
    assert all(torch.equal(x, y) for x, y in zip(first, flashinfer.chain_speculative_sampling(draft_probs, draft, target, generator=gen_b)))
    with pytest.raises(ValueError, match="argument 'seed'"):
        flashinfer.chain_speculative_sampling(draft_probs, draft, target, seed=torch.arange(4), offset=0)


@pytest.mark.parametrize("device", DEVICES)
def test_exact_in_distribution(device):
    """Many independent requests (rows): each emitted position follows the target, the emitted-draft
    count follows the product of acceptance rates, and the accepted count the sum of independent
    Bernoulli(alpha_j) trials."""
    vocab, n = 12, 3
    target, q, g = fixed_distributions(vocab, n, seed=31)
    draft = torch.multinomial(q, TRIALS, replacement=True, generator=g).t().contiguous()
    p_all = target[None].expand(TRIALS, -1, -1).contiguous()
    q_all = q[None].expand(TRIALS, -1, -1).contiguous()
    tokens, accepted, emitted = flashinfer.chain_speculative_sampling(
        q_all.to(device), draft.to(device), p_all.to(device), seed=77, offset=5)
    tokens, accepted, emitted = tokens.cpu(), accepted.cpu(), emitted.cpu()
    for position in range(n + 1):
        rows = emitted >= position
        counts = torch.bincount(tokens[rows, position].long(), minlength=vocab)
        assert chi_square_p_value(counts, target[position]) > P_VALUE_FLOOR, f"position {position}"
    alpha = torch.minimum(target[:n], q).sum(dim=-1).double()
    assert chi_square_p_value(torch.bincount(emitted.long(), minlength=n + 1), accepted_length_probs(alpha)) > P_VALUE_FLOOR
    independent = torch.ones(1, dtype=torch.float64)
    for a in alpha:  # distribution of a sum of independent Bernoulli(alpha_j)
        independent = torch.cat([independent * (1 - a), independent.new_zeros(1)]) + torch.cat([independent.new_zeros(1), independent * a])
    assert chi_square_p_value(torch.bincount(accepted.long(), minlength=n + 1), independent) > P_VALUE_FLOOR
